// MQTT 5 enhanced authentication served by a Wasm plugin, with MQTT.js: the `TEST-CHALLENGE`
// method of plugins/noop/test_auth.c (first data: the user name; challenge
// `nonce-for-<user>`; answer `<user>:<secret>`; server data `welcome <user>`), through
// MQTT.js's `authenticationMethod` and `handleAuth` hook. Run by tests/mqtt5_clients.rs.
//
// Usage: node mqtt5_plugin_auth.mjs URL USER SECRET
// Prints "plugin auth ok <server data>" when CONNACK accepted, "plugin auth refused <code>"
// when it refused; exits 1 on anything else.
import mqtt from "mqtt";

const [url, user, secret] = process.argv.slice(2);
if (!secret) {
  console.error("usage: node mqtt5_plugin_auth.mjs URL USER SECRET");
  process.exit(2);
}
setTimeout(() => {
  console.error("FAIL: did not finish within 15 s");
  process.exit(1);
}, 15000);

const METHOD = "TEST-CHALLENGE";
const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: `plugin-auth-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
  properties: { authenticationMethod: METHOD, authenticationData: Buffer.from(user) },
});

// The broker's AUTH 0x18 carries the plugin's challenge; answer it.
client.handleAuth = (packet, callback) => {
  const challenge = packet.properties.authenticationData.toString();
  if (challenge !== `nonce-for-${user}`) return callback(new Error(`unexpected challenge ${challenge}`));
  callback(null, {
    cmd: "auth",
    reasonCode: 0x18,
    properties: { authenticationMethod: METHOD, authenticationData: Buffer.from(`${user}:${secret}`) },
  });
};

client.on("connect", (connack) => {
  console.log(`plugin auth ok ${connack.properties?.authenticationData?.toString()}`);
  client.end(false, {}, () => process.exit(0));
});
client.on("error", (e) => {
  if (e.code !== undefined) {
    console.log(`plugin auth refused ${e.code}`);
    process.exit(0);
  }
  console.error(`FAIL: ${e.message}`);
  process.exit(1);
});
