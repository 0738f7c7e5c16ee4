// The publish/subscribe/QoS 2/retained/will scenario driven by MQTT.js, the same on every
// transport. Run by tests/transports.rs once per listener of one broker.
//
// Usage: node scenario.mjs URL [CA_FILE]
//   URL is mqtt://, mqtts://, ws:// or wss:// (with the /mqtt path for WebSocket);
//   CA_FILE (PEM) is trusted for mqtts:// and wss://.
// Prints "ok ..." for each step and "scenario passed URL" at the end; exits 1 with a
// message naming the step on any mismatch or timeout.
import fs from "node:fs";
import mqtt from "mqtt";

const [url, caFile] = process.argv.slice(2);
if (!url) {
  console.error("usage: node scenario.mjs URL [CA_FILE]");
  process.exit(2);
}
const scheme = new URL(url).protocol.replace(":", "");
// Topics and client ids are unique per transport so that runs on one broker never mix.
const tag = `js-${scheme}`;
const STEP_MS = 5000;
let step = "start";

function fail(message) {
  console.error(`FAIL [${url}] at step "${step}": ${message}`);
  process.exit(1);
}

const overall = setTimeout(() => fail("scenario did not finish within 30 s"), 30000);

function options(clientId, extra = {}) {
  const o = {
    clientId,
    protocolVersion: 4,
    clean: true,
    keepalive: 30,
    connectTimeout: STEP_MS,
    reconnectPeriod: 0,
    ...extra,
  };
  if (caFile) {
    o.ca = fs.readFileSync(caFile);
    o.rejectUnauthorized = true;
  }
  return o;
}

// Connects and resolves once CONNACK arrived; every message received is queued.
function connect(clientId, extra) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, options(clientId, extra));
    client.inbox = [];
    client.waiters = [];
    client.on("message", (topic, payload, packet) => {
      client.inbox.push({
        topic,
        payload: payload.toString(),
        qos: packet.qos,
        retain: packet.retain,
      });
      for (const w of client.waiters.splice(0)) w();
    });
    let connected = false;
    client.once("connect", () => {
      connected = true;
      resolve(client);
    });
    client.on("error", (e) => {
      if (!connected) reject(new Error(`${clientId}: ${e.message}`));
      else if (!client.destroyedOnPurpose) fail(`${clientId}: ${e.message}`);
    });
    client.once("close", () => reject(new Error(`${clientId}: closed before CONNACK`)));
  });
}

// The next queued message on `topic` (removed from the inbox); fails after STEP_MS.
function nextOn(client, topic) {
  return new Promise((resolve) => {
    const timer = setTimeout(
      () =>
        fail(
          `${client.options.clientId} received nothing on ${topic} within ${STEP_MS} ms; ` +
            `inbox: ${JSON.stringify(client.inbox)}`,
        ),
      STEP_MS,
    );
    const look = () => {
      const i = client.inbox.findIndex((m) => m.topic === topic);
      if (i >= 0) {
        clearTimeout(timer);
        resolve(client.inbox.splice(i, 1)[0]);
      } else {
        client.waiters.push(look);
      }
    };
    look();
  });
}

function expectMessage(m, want) {
  for (const [k, v] of Object.entries(want)) {
    if (m[k] !== v) {
      fail(`${k} is ${JSON.stringify(m[k])}, expected ${JSON.stringify(v)} in ${JSON.stringify(m)}`);
    }
  }
}

function subscribe(client, filter, qos) {
  return new Promise((resolve) => {
    client.subscribe(filter, { qos }, (err, granted) => {
      if (err) fail(`subscribe ${filter}: ${err.message}`);
      if (!granted || granted.length !== 1 || granted[0].qos !== qos) {
        fail(`subscribe ${filter} at QoS ${qos}: granted ${JSON.stringify(granted)}`);
      }
      resolve();
    });
  });
}

// Resolves when the publish flow of its QoS is complete (PUBACK, or PUBREC/PUBREL/PUBCOMP).
function publish(client, topic, payload, opts) {
  return new Promise((resolve) => {
    client.publish(topic, payload, opts, (err) => {
      if (err) fail(`publish ${topic}: ${err.message}`);
      resolve();
    });
  });
}

function end(client) {
  return new Promise((resolve) => client.end(false, {}, () => resolve()));
}

async function main() {
  step = "connect subscriber";
  const sub = await connect(`${tag}-sub`);
  step = "subscribe QoS 2";
  await subscribe(sub, `${tag}/#`, 2);
  console.log("ok subscribed at QoS 2");

  step = "connect publisher with a will";
  const pub = await connect(`${tag}-pub`, {
    will: { topic: `${tag}/will`, payload: "gone", qos: 1, retain: false },
  });

  for (const qos of [0, 1, 2]) {
    step = `publish QoS ${qos}`;
    await publish(pub, `${tag}/q${qos}`, `at qos ${qos}`, { qos });
    const m = await nextOn(sub, `${tag}/q${qos}`);
    expectMessage(m, { payload: `at qos ${qos}`, qos, retain: false });
    console.log(`ok QoS ${qos} received at QoS ${qos}`);
  }

  step = "QoS downgraded to the subscription's";
  const low = await connect(`${tag}-low`);
  await subscribe(low, `${tag}/down`, 1);
  await publish(pub, `${tag}/down`, "downgraded", { qos: 2 });
  expectMessage(await nextOn(low, `${tag}/down`), { payload: "downgraded", qos: 1 });
  expectMessage(await nextOn(sub, `${tag}/down`), { payload: "downgraded", qos: 2 });
  console.log("ok QoS 2 publish delivered at QoS 1 to a QoS 1 subscription");

  step = "publish retained";
  await publish(pub, `${tag}/retained`, "kept", { qos: 1, retain: true });
  // A live delivery to an existing subscription has RETAIN 0 [MQTT-3.3.1-9].
  expectMessage(await nextOn(sub, `${tag}/retained`), { payload: "kept", retain: false });
  step = "retained delivered on a later subscribe";
  const late = await connect(`${tag}-late`);
  await subscribe(late, `${tag}/retained`, 1);
  expectMessage(await nextOn(late, `${tag}/retained`), {
    payload: "kept",
    retain: true,
    qos: 1,
  });
  console.log("ok retained message delivered to a later subscriber with the retain flag");

  step = "delete retained with an empty payload";
  await publish(pub, `${tag}/retained`, "", { qos: 1, retain: true });
  expectMessage(await nextOn(sub, `${tag}/retained`), { payload: "" });
  expectMessage(await nextOn(late, `${tag}/retained`), { payload: "", retain: false });
  const later = await connect(`${tag}-later`);
  await subscribe(later, `${tag}/retained`, 1);
  // Anything retained would arrive before a message published after the SUBACK.
  await publish(pub, `${tag}/retained`, "marker", { qos: 1 });
  expectMessage(await nextOn(later, `${tag}/retained`), { payload: "marker", retain: false });
  if (later.inbox.length !== 0) {
    fail(`deleted retained message still delivered: ${JSON.stringify(later.inbox)}`);
  }
  expectMessage(await nextOn(sub, `${tag}/retained`), { payload: "marker" });
  expectMessage(await nextOn(late, `${tag}/retained`), { payload: "marker" });
  console.log("ok empty retained payload deleted the retained message");

  step = "will on abrupt close";
  // No DISCONNECT: the transport is torn down under the client.
  pub.destroyedOnPurpose = true;
  pub.stream.destroy();
  expectMessage(await nextOn(sub, `${tag}/will`), { payload: "gone", qos: 1, retain: false });
  console.log("ok will published after the publisher's connection was destroyed");

  step = "no duplicates";
  // Give a duplicate (a QoS 2 delivered twice, a second will) a moment to show up.
  await new Promise((r) => setTimeout(r, 300));
  for (const c of [sub, low, late, later]) {
    if (c.inbox.length !== 0) {
      fail(`${c.options.clientId} received unexpected messages: ${JSON.stringify(c.inbox)}`);
    }
  }

  step = "disconnect";
  await Promise.all([sub, low, late, later].map(end));
  clearTimeout(overall);
  console.log(`scenario passed ${url}`);
  process.exit(0);
}

main().catch((e) => fail(e.message));
