// sensor-bridge: an mqtt-broker transformer plugin in JavaScript (built with jco, QuickJS).
//
// Turns raw sensor readings such as `sensors_aloys/dht` → `25.5` into structured JSON
// readings on clean topics (`home/aloys/temperature` →
// `{"device":"aloys","temperature":25.5,"unit":"C","ts":1795000000000}`), per the rules of
// its config. Garbage (`nan`, empty, non-numeric, out of range) goes to an error topic with
// the reason instead. See README.md for the config reference.
//
// The logic lives in lib/bridge.js (no host imports, unit-tested with `node --test test/`);
// this file only connects it to the broker's host functions. build.sh bundles both.

import { log, nowMillis } from 'mqtt-broker:plugin/host@0.1.0';
import { createBridge } from './lib/bridge.js';

let bridge = null;
let lastStats = 0;
const KEEP = { action: { tag: 'keep' }, additional: [] };

export const lifecycle = {
  init(config) {
    try {
      bridge = createBridge(config);
    } catch (e) {
      // A thrown string becomes init's `err`: the broker refuses the plugin with it.
      throw String(e && e.message ? e.message : e);
    }
    lastStats = Number(nowMillis());
    const c = bridge.config;
    log('debug', `sensor-bridge ready: ${c.rules.length} rule(s): ${c.rules.map((r) => `${r.name} (${r.pattern.pattern}, ${r.parser}${r.replace ? ', replace' : ''})`).join('; ')}`);
  },
};

export const transform = {
  transform(client, message) {
    if (bridge === null) return KEEP;
    // The clock is read only for a matched message (a host call costs microseconds here).
    let now = 0;
    const result = bridge.process(message.topic, message.payload, () => (now = Number(nowMillis())));
    if (result === null) return KEEP;
    if (bridge.config.statsMillis > 0 && now - lastStats >= bridge.config.statsMillis) {
      lastStats = now;
      log('info', bridge.statsLine());
    }
    if (result.problems.length > 0 && bridge.config.logErrors !== 'off') {
      for (const p of result.problems) {
        log(bridge.config.logErrors, `rule ${result.rule}: garbage ${p.quantity} from device ${result.device} on ${message.topic}: ${p.reason} (raw ${JSON.stringify(result.raw)})`);
      }
    }
    const additional = result.outputs.map((o) => ({
      topic: o.topic,
      payload: o.payload,
      qos: message.qos,
      // An error report is an event, never retained state.
      retain: o.error ? false : message.retain,
    }));
    return { action: { tag: result.replace ? 'drop' : 'keep' }, additional };
  },
};
