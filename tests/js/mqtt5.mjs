// MQTT 5 with MQTT.js (protocolVersion: 5): CONNACK properties, topic aliases, user
// properties, subscription identifiers, PUBACK reason codes and a shared subscription.
// Run by tests/mqtt5_clients.rs.
//
// Usage: node mqtt5.mjs URL TOPIC_ALIAS_MAXIMUM RECEIVE_MAXIMUM
//   URL is mqtt://host:port; the two numbers are what the broker is configured to announce
//   in CONNACK.
// Prints "ok ..." for each step and "mqtt5 passed URL" at the end; exits 1 with a message
// naming the step on any mismatch or timeout.
import mqtt from "mqtt";

const [url, aliasMax, receiveMax] = process.argv.slice(2);
if (!receiveMax) {
  console.error("usage: node mqtt5.mjs URL TOPIC_ALIAS_MAXIMUM RECEIVE_MAXIMUM");
  process.exit(2);
}
const STEP_MS = 5000;
let step = "start";

function fail(message) {
  console.error(`FAIL [${url}] at step "${step}": ${message}`);
  process.exit(1);
}

const overall = setTimeout(() => fail("did not finish within 30 s"), 30000);

function check(condition, message) {
  if (!condition) fail(message);
}

// Connects with MQTT 5 and resolves with the client and the CONNACK; messages are queued.
function connect(clientId) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      clientId,
      protocolVersion: 5,
      clean: true,
      keepalive: 30,
      connectTimeout: STEP_MS,
      reconnectPeriod: 0,
    });
    client.inbox = [];
    client.waiters = [];
    client.on("message", (topic, payload, packet) => {
      client.inbox.push({ topic, payload: payload.toString(), properties: packet.properties || {} });
      for (const w of client.waiters.splice(0)) w();
    });
    client.once("connect", (connack) => resolve({ client, connack }));
    client.on("error", (e) => reject(new Error(`${clientId}: ${e.message}`)));
    client.once("close", () => reject(new Error(`${clientId}: closed before CONNACK`)));
  });
}

// Resolves with the first `n` queued messages; fails after STEP_MS.
function take(client, n) {
  return new Promise((resolve) => {
    const timer = setTimeout(
      () => fail(`${client.options.clientId}: ${client.inbox.length} of ${n} messages arrived`),
      STEP_MS,
    );
    const poll = () => {
      if (client.inbox.length >= n) {
        clearTimeout(timer);
        resolve(client.inbox.splice(0, n));
      } else {
        client.waiters.push(poll);
      }
    };
    poll();
  });
}

async function subscribe(client, filter, options) {
  const granted = await client.subscribeAsync(filter, options);
  check(granted[0].qos === options.qos, `SUBSCRIBE ${filter}: ${JSON.stringify(granted)}`);
}

try {
  step = "connect";
  const { client: sub, connack } = await connect("js5-sub");
  const props = connack.properties || {};
  check(
    props.topicAliasMaximum === Number(aliasMax) && props.receiveMaximum === Number(receiveMax),
    `CONNACK properties ${JSON.stringify(props)}`,
  );
  console.log(
    `ok CONNACK topicAliasMaximum=${props.topicAliasMaximum} receiveMaximum=${props.receiveMaximum}`,
  );
  const { client: pub } = await connect("js5-pub");

  step = "subscribe with a subscription identifier";
  await subscribe(sub, "js5/sensors/#", { qos: 1, properties: { subscriptionIdentifier: 5 } });

  step = "topic alias and user properties";
  // The first PUBLISH sets alias 1; the second has an empty topic and only the alias.
  await pub.publishAsync("js5/sensors/temp", "21.5", {
    qos: 1,
    properties: { topicAlias: 1, userProperties: { unit: "celsius", site: ["north", "roof"] } },
  });
  await pub.publishAsync("", "22.0", { qos: 1, properties: { topicAlias: 1 } });
  const [first, second] = await take(sub, 2);
  for (const [m, payload] of [
    [first, "21.5"],
    [second, "22.0"],
  ]) {
    check(
      m.topic === "js5/sensors/temp" && m.payload === payload,
      `got ${JSON.stringify(m)}, expected ${payload} on js5/sensors/temp`,
    );
    const ids = [m.properties.subscriptionIdentifier].flat();
    check(ids.length === 1 && ids[0] === 5, `subscription identifier ${JSON.stringify(ids)}`);
    check(m.properties.topicAlias === undefined, "the broker used a topic alias it was not allowed");
  }
  check(
    JSON.stringify(first.properties.userProperties) ===
      JSON.stringify({ unit: "celsius", site: ["north", "roof"] }),
    `user properties ${JSON.stringify(first.properties.userProperties)}`,
  );
  check(second.properties.userProperties === undefined, "user properties leaked to the next message");
  console.log("ok topic alias resolved for the subscriber");
  console.log("ok user properties delivered in order with repeated keys");
  console.log("ok subscription identifier 5 on every message");

  step = "PUBACK reason code";
  const acks = [];
  pub.on("packetreceive", (p) => p.cmd === "puback" && acks.push(p.reasonCode));
  await pub.publishAsync("js5/nobody/listens", "x", { qos: 1 });
  await pub.publishAsync("js5/sensors/temp", "23.0", { qos: 1 });
  await take(sub, 1);
  check(JSON.stringify(acks) === "[16,0]", `PUBACK reason codes ${JSON.stringify(acks)}`);
  console.log("ok PUBACK 0x10 without subscribers, 0x00 with one");

  step = "shared subscription";
  const workers = [];
  for (const id of ["js5-w1", "js5-w2"]) {
    const { client } = await connect(id);
    await subscribe(client, "$share/g/js5/jobs/#", { qos: 1 });
    workers.push(client);
  }
  const N = 20;
  await Promise.all(
    Array.from({ length: N }, (_, i) => pub.publishAsync(`js5/jobs/${i}`, String(i), { qos: 1 })),
  );
  // Each job exactly once across the group; give a second copy time to show up.
  const deadline = Date.now() + STEP_MS;
  while (workers.reduce((n, w) => n + w.inbox.length, 0) < N && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 300));
  const seen = workers.flatMap((w) => w.inbox.map((m) => m.payload)).sort((a, b) => a - b);
  check(
    JSON.stringify(seen) === JSON.stringify(Array.from({ length: N }, (_, i) => String(i))),
    `jobs seen by the group: ${JSON.stringify(seen)}`,
  );
  check(
    workers.every((w) => w.inbox.length > 0),
    `per member: ${workers.map((w) => w.inbox.length)}`,
  );
  console.log(`ok shared subscription: ${workers.map((w) => w.inbox.length).join("+")} = ${N}, each once`);

  step = "disconnect";
  for (const c of [sub, pub, ...workers]) await c.endAsync();
  clearTimeout(overall);
  console.log(`mqtt5 passed ${url}`);
} catch (e) {
  fail(e.message);
}
