// MQTT 5 enhanced authentication with MQTT.js: SCRAM-SHA-512 (RFC 5802) computed with
// Node's own crypto, through MQTT.js's `authenticationMethod` and `handleAuth` hook.
// Run by tests/mqtt5_clients.rs.
//
// Usage: node mqtt5_scram.mjs URL USER PASSWORD
// Prints "scram ok <user>" when the broker accepted the proof and proved it knows the
// password too (server signature in CONNACK), "scram refused <reason code>" when CONNACK
// refused; exits 1 on anything else.
import crypto from "node:crypto";
import mqtt from "mqtt";

const [url, user, password] = process.argv.slice(2);
if (!password) {
  console.error("usage: node mqtt5_scram.mjs URL USER PASSWORD");
  process.exit(2);
}
setTimeout(() => {
  console.error("FAIL: did not finish within 15 s");
  process.exit(1);
}, 15000);

const METHOD = "SCRAM-SHA-512";
const cnonce = crypto.randomBytes(18).toString("base64");
const clientFirstBare = `n=${user},r=${cnonce}`;
const hmac = (key, data) => crypto.createHmac("sha512", key).update(data).digest();
let expectedServerSignature = null;

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: `scram-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
  properties: {
    authenticationMethod: METHOD,
    authenticationData: Buffer.from(`n,,${clientFirstBare}`),
  },
});

// The broker's AUTH 0x18 carries server-first; answer with the proof.
client.handleAuth = (packet, callback) => {
  const serverFirst = packet.properties.authenticationData.toString();
  const attrs = Object.fromEntries(serverFirst.split(",").map((a) => [a[0], a.slice(2)]));
  if (!attrs.r.startsWith(cnonce)) return callback(new Error("server nonce does not extend ours"));
  const salted = crypto.pbkdf2Sync(password, Buffer.from(attrs.s, "base64"), Number(attrs.i), 64, "sha512");
  const withoutProof = `c=biws,r=${attrs.r}`;
  const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
  const clientKey = hmac(salted, "Client Key");
  const storedKey = crypto.createHash("sha512").update(clientKey).digest();
  const signature = hmac(storedKey, authMessage);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]));
  expectedServerSignature = `v=${hmac(hmac(salted, "Server Key"), authMessage).toString("base64")}`;
  callback(null, {
    cmd: "auth",
    reasonCode: 0x18,
    properties: {
      authenticationMethod: METHOD,
      authenticationData: Buffer.from(`${withoutProof},p=${proof.toString("base64")}`),
    },
  });
};

client.on("connect", (connack) => {
  const data = connack.properties?.authenticationData?.toString();
  if (data !== expectedServerSignature) {
    console.error(`FAIL: server signature ${data}, expected ${expectedServerSignature}`);
    process.exit(1);
  }
  console.log(`scram ok ${user}`);
  client.end(false, {}, () => process.exit(0));
});
client.on("error", (e) => {
  if (e.code !== undefined) {
    console.log(`scram refused ${e.code}`);
    process.exit(0);
  }
  console.error(`FAIL: ${e.message}`);
  process.exit(1);
});
