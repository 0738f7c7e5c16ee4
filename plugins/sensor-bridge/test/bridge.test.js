// Unit tests of the rule config and of whole-message processing (node --test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createBridge, parseConfig, utf8Encode, utf8Decode, ConfigError, MAX_ADDITIONAL_MESSAGES,
} from '../lib/bridge.js';

const NOW = 1795000000000;

/** The pairs `init` receives for a YAML `rules:` list (the broker passes it as JSON). */
function pairs(rules, extra = {}) {
  return [['rules', JSON.stringify(rules)], ...Object.entries(extra).map(([k, v]) => [k, String(v)])];
}

const FIRMWARE_RULES = [
  {
    name: 'split',
    topic: 'sensors/{device}/{kind:temperature|humidity}',
    quantity: '{kind}',
    output: 'home/{device}/{quantity}',
    quantities: {
      temperature: { unit: 'C', round: 1, min: -40, max: 80 },
      humidity: { unit: '%', round: 0, min: 0, max: 100 },
    },
  },
  {
    name: 'legacy',
    topic: 'sensors_{device}/dht',
    quantity: 'temperature',
    output: 'home/{device}/legacy/temperature',
    unit: 'C',
    round: 1,
    min: -40,
    max: 80,
    replace: true,
  },
];

/** Asserts that `f` throws a ConfigError whose message matches `re`. */
function refuses(f, re) {
  assert.throws(f, (e) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.match(e.message, re);
    return true;
  });
}

function run(bridge, topic, payload) {
  const bytes = typeof payload === 'string' ? utf8Encode(payload) : payload;
  const r = bridge.process(topic, bytes, () => NOW);
  if (r === null) return null;
  return {
    ...r,
    outputs: r.outputs.map((o) => {
      const text = utf8Decode(o.payload);
      assert.ok(text.ok, 'outputs are UTF-8');
      return { ...o, payload: text.text, json: JSON.parse(text.text) };
    }),
  };
}

test('a valid plain reading becomes the documented JSON', () => {
  const b = createBridge(pairs(FIRMWARE_RULES));
  const r = run(b, 'sensors/aloys/temperature', '25.5');
  assert.equal(r.rule, 'split');
  assert.equal(r.replace, false, 'keep the raw message by default');
  assert.equal(r.outputs.length, 1);
  assert.equal(r.outputs[0].topic, 'home/aloys/temperature');
  assert.equal(r.outputs[0].payload, `{"device":"aloys","temperature":25.5,"unit":"C","ts":${NOW}}`);
  const h = run(b, 'sensors/aloys/humidity', '41.5');
  assert.equal(h.outputs[0].payload, `{"device":"aloys","humidity":42,"unit":"%","ts":${NOW}}`, 'rounded to 0 decimals');
});

test('first matching rule wins; unmatched topics are left alone', () => {
  const b = createBridge(pairs([
    { name: 'specific', topic: 'sensors/{device}/temperature', quantity: 'temperature', output: 'a/{device}' },
    { name: 'general', topic: 'sensors/{device}/{kind}', quantity: '{kind}', output: 'b/{device}/{quantity}' },
  ]));
  assert.equal(run(b, 'sensors/x/temperature', '1').rule, 'specific');
  assert.equal(run(b, 'sensors/x/pressure', '1').outputs[0].topic, 'b/x/pressure');
  assert.equal(run(b, 'other/x/temperature', '1'), null);
  assert.equal(run(b, 'sensors/x', '1'), null);
  assert.deepEqual(b.counters, { messages: 4, matched: 2, readings: 2, garbage: 0, unmatched: 2 });
});

test('status topics do not match a rule restricted to temperature|humidity', () => {
  const b = createBridge(pairs(FIRMWARE_RULES));
  assert.equal(run(b, 'sensors/aloys/status', 'online'), null);
});

test('replace: true asks to drop the raw message', () => {
  const b = createBridge(pairs(FIRMWARE_RULES));
  const r = run(b, 'sensors_aloys/dht', '25.46');
  assert.equal(r.replace, true);
  assert.equal(r.outputs[0].topic, 'home/aloys/legacy/temperature');
  assert.deepEqual(r.outputs[0].json, { device: 'aloys', temperature: 25.5, unit: 'C', ts: NOW });
});

test('garbage goes to the error topic with the device, the raw payload and the reason', () => {
  const b = createBridge(pairs(FIRMWARE_RULES));
  const cases = [
    ['nan', 'not a number: "nan"'],
    ['NaN', 'not a number: "NaN"'],
    ['', 'empty value'],
    ['hot', 'not a number: "hot"'],
    ['25,5', 'not a number: "25,5"'],
    ['999.9', 'out of range: 999.9 is above max 80'],
    ['-999.9', 'out of range: -999.9 is below min -40'],
  ];
  for (const [payload, reason] of cases) {
    const r = run(b, 'sensors/esp0001/temperature', payload);
    assert.equal(r.outputs.length, 1, payload);
    const o = r.outputs[0];
    assert.equal(o.error, true);
    assert.equal(o.topic, 'home/esp0001/temperature/error');
    assert.deepEqual(o.json, {
      device: 'esp0001', quantity: 'temperature', topic: 'sensors/esp0001/temperature', raw: payload, reason, ts: NOW,
    });
    assert.deepEqual(r.problems, [{ quantity: 'temperature', reason }]);
  }
  assert.equal(b.counters.garbage, cases.length);
  assert.equal(b.counters.readings, 0);
  assert.equal(b.perRule.get('split').garbage, cases.length);
});

test('range limits are inclusive and apply before rounding', () => {
  const b = createBridge(pairs([{ topic: 's/{device}', quantity: 'q', output: 'o/{device}', min: 0, max: 100, round: 0 }]));
  assert.equal(run(b, 's/d', '100').outputs[0].json.q, 100);
  assert.equal(run(b, 's/d', '0').outputs[0].json.q, 0);
  assert.equal(run(b, 's/d', '100.2').outputs[0].error, true);
  assert.equal(run(b, 's/d', '-0.1').outputs[0].error, true);
});

test('kv payloads produce one message per quantity; garbage ones go to their error topic', () => {
  const b = createBridge(pairs([{
    name: 'kv', topic: 'dht/{device}', parser: 'kv', fields: { t: 'temperature', h: 'humidity' },
    output: 'home/{device}/{quantity}', quantities: { temperature: { unit: 'C', max: 80 }, humidity: { unit: '%' } },
  }]));
  const r = run(b, 'dht/aloys', 't=25.5,h=40.1');
  assert.deepEqual(r.outputs.map((o) => [o.topic, o.json]), [
    ['home/aloys/temperature', { device: 'aloys', temperature: 25.5, unit: 'C', ts: NOW }],
    ['home/aloys/humidity', { device: 'aloys', humidity: 40.1, unit: '%', ts: NOW }],
  ]);
  const g = run(b, 'dht/aloys', 't=nan,h=40.1');
  assert.deepEqual(g.outputs.map((o) => [o.topic, o.error]), [
    ['home/aloys/temperature/error', true],
    ['home/aloys/humidity', false],
  ]);
  assert.equal(g.outputs[0].json.raw, 't=nan,h=40.1', 'the whole raw payload');
});

test('csv and json payloads', () => {
  const b = createBridge(pairs([
    { name: 'csv', topic: 'csv/{device}', parser: 'csv', columns: [null, 'temperature', 'humidity'], output: 'home/{device}/{quantity}', round: 1 },
    { name: 'json', topic: 'json/{device}', parser: 'json', fields: { 'env.t': 'temperature', rh: 'humidity' }, output: 'home/{device}/{quantity}' },
  ]));
  const c = run(b, 'csv/x', '1700000000,21.04,55.55');
  assert.deepEqual(c.outputs.map((o) => o.json), [
    { device: 'x', temperature: 21, ts: NOW },
    { device: 'x', humidity: 55.6, ts: NOW },
  ]);
  const j = run(b, 'json/x', '{"env":{"t":21.5},"rh":"40"}');
  assert.deepEqual(j.outputs.map((o) => o.json), [
    { device: 'x', temperature: 21.5, ts: NOW },
    { device: 'x', humidity: 40, ts: NOW },
  ]);
});

test('an unparsable JSON payload is one error per quantity, once per error topic', () => {
  const b = createBridge(pairs([
    { name: 'j', topic: 'json/{device}', parser: 'json', fields: ['temperature', 'humidity'], output: 'home/{device}/{quantity}' },
    { name: 'shared', topic: 'j2/{device}', parser: 'json', fields: ['temperature', 'humidity'], output: 'home/{device}/{quantity}', error_topic: 'errors/{device}' },
  ]));
  const r = run(b, 'json/x', '{"temperature": 2');
  assert.deepEqual(r.outputs.map((o) => o.topic), ['home/x/temperature/error', 'home/x/humidity/error']);
  assert.match(r.outputs[0].json.reason, /^unparsable JSON/);
  const s = run(b, 'j2/x', 'nope');
  assert.deepEqual(s.outputs.map((o) => o.topic), ['errors/x'], 'deduplicated on a shared error topic');
  assert.equal(s.problems.length, 2, 'both are counted');
  assert.equal(b.counters.garbage, 4);
});

test('a global error_topic applies to every rule without its own', () => {
  const b = createBridge(pairs(FIRMWARE_RULES, { error_topic: 'bridge/errors/{device}' }));
  assert.equal(run(b, 'sensors/d/temperature', 'nan').outputs[0].topic, 'bridge/errors/d');
});

test('non-UTF-8 and oversized payloads are garbage, not crashes', () => {
  const b = createBridge(pairs(FIRMWARE_RULES, { max_payload: 16 }));
  const r = run(b, 'sensors/d/temperature', new Uint8Array([0x32, 0x35, 0xff]));
  assert.equal(r.outputs[0].json.reason, 'payload is not UTF-8');
  assert.equal(r.outputs[0].json.raw, '25\ufffd');
  const big = run(b, 'sensors/d/temperature', '1'.repeat(1000));
  assert.equal(big.outputs[0].json.reason, 'payload too large (1000 bytes; max_payload is 16)');
  assert.equal(big.outputs[0].json.raw.length, 256, 'raw copy is cut');
});

test('special characters in devices and units are escaped JSON', () => {
  const b = createBridge(pairs([{ topic: 's/{device}', quantity: 'temperature', output: 'o/{device}', unit: '°C "x"' }]));
  const r = run(b, 's/kü"che', '1');
  assert.deepEqual(r.outputs[0].json, { device: 'kü"che', temperature: 1, unit: '°C "x"', ts: NOW });
});

test('a quantity taken from the topic cannot clash with the payload keys', () => {
  const b = createBridge(pairs([{ topic: 's/{device}/{kind}', quantity: '{kind}', output: 'o/{device}/{quantity}' }]));
  const r = run(b, 's/d/ts', '1');
  assert.equal(r.outputs[0].error, true);
  assert.match(r.outputs[0].json.reason, /`ts` cannot be a quantity name/);
});

test('retain and qos are the caller\'s business; outputs never exceed the broker limit', () => {
  const columns = Array.from({ length: MAX_ADDITIONAL_MESSAGES }, (_, i) => `q${i}`);
  const b = createBridge(pairs([{ topic: 'c/{device}', parser: 'csv', columns, output: 'o/{device}/{quantity}' }]));
  const r = run(b, 'c/d', columns.map((_, i) => String(i)).join(','));
  assert.equal(r.outputs.length, MAX_ADDITIONAL_MESSAGES);
});

test('config errors name the rule and the key', () => {
  const rule = { name: 'dht', topic: 'sensors/{device}/t', quantity: 'temperature', output: 'home/{device}/t' };
  const bad = [
    [{ ...rule, parser: 'xml' }, 'rules[0] (dht): key `parser`: unknown parser `xml` (use plain, kv, csv or json)'],
    [{ ...rule, topic: 'sensors/+/t' }, /^rules\[0\] \(dht\): key `topic`: MQTT wildcards/],
    [{ ...rule, topic: 'sensors/{dev}/t' }, /^rules\[0\] \(dht\): key `topic`: the pattern must capture the device/],
    [{ ...rule, topic: undefined }, /^rules\[0\] \(dht\): key `topic`: is required/],
    [{ ...rule, output: undefined }, /^rules\[0\] \(dht\): key `output`: is required/],
    [{ ...rule, output: 'home/{room}' }, /^rules\[0\] \(dht\): key `output`: `\{room\}` is not known here/],
    [{ ...rule, quantity: undefined }, /^rules\[0\] \(dht\): key `quantity`: is required with parser plain/],
    [{ ...rule, quantity: 'ts' }, /^rules\[0\] \(dht\): key `quantity`: `ts` cannot be a quantity name/],
    [{ ...rule, round: 1.5 }, /^rules\[0\] \(dht\): key `round`: must be a whole number/],
    [{ ...rule, round: 11 }, /^rules\[0\] \(dht\): key `round`/],
    [{ ...rule, min: 'cold' }, /^rules\[0\] \(dht\): key `min`: must be a number/],
    [{ ...rule, min: 10, max: 0 }, /^rules\[0\] \(dht\): key `max`: is below min/],
    [{ ...rule, replace: 'yes' }, /^rules\[0\] \(dht\): key `replace`: must be true or false/],
    [{ ...rule, unit: 5 }, /^rules\[0\] \(dht\): key `unit`: must be a string/],
    [{ ...rule, fields: ['a'] }, /^rules\[0\] \(dht\): key `fields`: only applies to the kv and json parsers/],
    [{ ...rule, separator: ';' }, /^rules\[0\] \(dht\): key `separator`: only applies/],
    [{ ...rule, parse: 'kv' }, /^rules\[0\] \(dht\): unknown key `parse`/],
    [{ ...rule, error_topic: 'err/{nope}' }, /^rules\[0\] \(dht\): key `error_topic`: `\{nope\}` is not known/],
    [{ ...rule, quantities: { humidity: { unit: '%' } } }, /^rules\[0\] \(dht\): key `quantities.humidity`: `humidity` is not one of this rule's quantities/],
    [{ ...rule, quantities: { temperature: { units: 'C' } } }, /^rules\[0\] \(dht\): key `quantities.temperature`: unknown key `units`/],
    [{ ...rule, quantity: undefined, parser: 'kv' }, /^rules\[0\] \(dht\): key `fields`: is required with parser kv/],
    [{ ...rule, quantity: undefined, parser: 'csv' }, /^rules\[0\] \(dht\): key `columns`: is required with parser csv/],
    [{ ...rule, quantity: undefined, parser: 'kv', fields: { t: 'x', h: 'x' } }, /^rules\[0\] \(dht\): key `fields`: names a quantity twice/],
    [{ ...rule, quantity: undefined, parser: 'kv', fields: { t: 'a', h: 'b' } }, /^rules\[0\] \(dht\): key `output`: the parser yields several quantities/],
    [{ ...rule, quantity: undefined, parser: 'csv', columns: Array.from({ length: 65 }, (_, i) => `c${i}`), output: 'o/{quantity}' }, /^rules\[0\] \(dht\): key `columns`: names 65 quantities; at most 64/],
    ['just a string', /^rules\[0\]: each rule must be a map/],
  ];
  for (const [r, expected] of bad) {
    assert.throws(() => parseConfig(pairs([r])), (e) => {
      assert.ok(e instanceof ConfigError, String(e));
      if (typeof expected === 'string') assert.equal(e.message, expected);
      else assert.match(e.message, expected);
      return true;
    }, JSON.stringify(r));
  }
  // The second rule is named by its position when it has no name.
  refuses(() => parseConfig(pairs([rule, { ...rule, name: undefined, parser: 'xml' }])), /^rules\[1\]: key `parser`/);
  refuses(() => parseConfig(pairs([rule, rule])), /^rules: the name `dht` is used twice/);
});

test('config errors outside the rules', () => {
  refuses(() => parseConfig([]), /config key `rules` is required/);
  refuses(() => parseConfig([['rules', '[']]), /config key `rules` is not a list of rules/);
  refuses(() => parseConfig([['rules', '[]']]), /must be a non-empty list/);
  refuses(() => parseConfig([['rules', '{"a":1}']]), /must be a non-empty list/);
  const ok = JSON.stringify([{ topic: 's/{device}', quantity: 'q', output: 'o' }]);
  refuses(() => parseConfig([['rules', ok], ['rule', 'x']]), /config: unknown key `rule`/);
  refuses(() => parseConfig([['rules', ok], ['log_errors', 'loud']]), /config key `log_errors`/);
  refuses(() => parseConfig([['rules', ok], ['stats_interval', 'often']]), /config key `stats_interval`/);
  refuses(() => parseConfig([['rules', ok], ['max_payload', '0']]), /config key `max_payload`/);
  const c = parseConfig([['rules', ok], ['stats_interval', '5m'], ['log_errors', 'off'], ['max_payload', '64']]);
  assert.deepEqual([c.statsMillis, c.logErrors, c.maxPayload], [300000, 'off', 64]);
  const d = parseConfig([['rules', ok]]);
  assert.deepEqual([d.statsMillis, d.logErrors, d.maxPayload, d.rules[0].replace], [60000, 'warn', 1024, false]);
});

test('the stats line counts per rule', () => {
  const b = createBridge(pairs(FIRMWARE_RULES));
  run(b, 'sensors/a/temperature', '20');
  run(b, 'sensors/a/temperature', 'nan');
  run(b, 'sensors_a/dht', '20');
  run(b, 'x', '1');
  assert.equal(b.statsLine(), 'sensor-bridge stats (this instance): 4 messages, 3 matched, 2 readings out, 1 garbage, 1 not matched; '
    + 'split: 2 matched, 1 readings, 1 garbage; legacy: 1 matched, 1 readings, 0 garbage');
});

test('the examples of README.md work as documented', () => {
  const b = createBridge(pairs([
    {
      topic: 'dht/{device}', parser: 'kv', fields: { t: 'temperature', h: 'humidity' }, output: 'home/{device}/{quantity}',
      quantities: { temperature: { unit: 'C', min: -40, max: 80 }, humidity: { unit: '%', min: 0, max: 100 } },
    },
    {
      topic: '{site}/station/{device}/csv', parser: 'csv', columns: [null, 'temperature', 'humidity', 'pressure'],
      output: 'weather/{site}/{device}/{quantity}', error_topic: 'weather/{site}/errors', quantities: { pressure: { unit: 'hPa', round: 0 } },
    },
    {
      topic: 'tele/{device}/SENSOR', parser: 'json', fields: { 'AM2301.Temperature': 'temperature', 'AM2301.Humidity': 'humidity' },
      output: 'home/{device}/{quantity}', round: 1, replace: true,
    },
  ]));
  const kv = run(b, 'dht/aloys', 't=nan,h=40.1');
  assert.deepEqual(kv.outputs.map((o) => [o.topic, o.json.reason ?? o.json.humidity]), [
    ['home/aloys/temperature/error', 'not a number: "nan"'],
    ['home/aloys/humidity', 40.1],
  ]);
  assert.equal(kv.outputs[1].payload, `{"device":"aloys","humidity":40.1,"unit":"%","ts":${NOW}}`);
  const csv = run(b, 'lab/station/ws1/csv', '1700000000,21.5,nan,1013.4');
  assert.deepEqual(csv.outputs.map((o) => o.topic), ['weather/lab/ws1/temperature', 'weather/lab/errors', 'weather/lab/ws1/pressure']);
  assert.equal(csv.outputs[2].json.pressure, 1013);
  assert.equal(csv.outputs[2].json.unit, 'hPa');
  const broken = run(b, 'lab/station/ws1/csv', '');
  assert.deepEqual(broken.outputs.map((o) => o.topic), ['weather/lab/errors'], 'one report for a payload-wide failure');
  assert.equal(broken.problems.length, 3);
  const tasmota = run(b, 'tele/plug1/SENSOR', '{"Time":"2026-11-25T20:00:00","AM2301":{"Temperature":21.46,"Humidity":40}}');
  assert.equal(tasmota.replace, true);
  assert.deepEqual(tasmota.outputs.map((o) => o.json), [
    { device: 'plug1', temperature: 21.5, ts: NOW },
    { device: 'plug1', humidity: 40, ts: NOW },
  ]);
});

test('README error messages', () => {
  const split = {
    name: 'split', topic: 'sensors/{device}/{kind:temperature|humidity}', quantity: '{kind}', output: 'home/{device}/{quantity}',
  };
  refuses(() => parseConfig(pairs([{ ...split, topic: 'sensors/+/{kind}' }])),
    /^rules\[0\] \(split\): key `topic`: MQTT wildcards \+ and # are not allowed: name a level with \{name\} instead$/);
  refuses(() => parseConfig(pairs([{ ...split, output: 'home/{room}' }])),
    /^rules\[0\] \(split\): key `output`: `\{room\}` is not known here \(known: \{device\}, \{kind\}, \{quantity\}\)$/);
});
