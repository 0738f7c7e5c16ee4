// MQTT.js over ws:// as a browser page would use it: subscribe to a device's readings,
// send it a command, print what arrives. Usage: node ws_e2e.mjs PORT
import mqtt from "mqtt";

const port = process.argv[2];
const client = mqtt.connect(`ws://127.0.0.1:${port}/mqtt`, {
  clientId: "dashboard",
  protocolVersion: 4,
  connectTimeout: 5000,
  reconnectPeriod: 0,
});
const timer = setTimeout(() => {
  console.error("timeout");
  process.exit(1);
}, 10000);
client.on("error", (e) => {
  console.error("error", e.message);
  process.exit(1);
});
client.on("connect", () => {
  client.subscribe("sensors_aloys/dht", { qos: 0 }, (err) => {
    if (err) {
      console.error("subscribe failed", err.message);
      process.exit(1);
    }
    client.publish("dashboard/cmd", "led=on", { qos: 1 });
  });
});
client.on("message", (topic, payload) => {
  console.log(`received ${topic} ${payload.toString()}`);
  clearTimeout(timer);
  client.end(false, () => process.exit(0));
});
