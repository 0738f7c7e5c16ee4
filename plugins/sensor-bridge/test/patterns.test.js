// Unit tests of the topic patterns, templates and number handling (node --test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  compilePattern, compileTemplate, parseNumber, roundTo, parseSeconds, utf8Decode, utf8Encode,
} from '../lib/bridge.js';

test('a pattern captures whole levels by name', () => {
  const p = compilePattern('sensors/{device}/{kind}');
  assert.deepEqual(p.names, ['device', 'kind']);
  assert.deepEqual(p.match('sensors/aloys/temperature'), { device: 'aloys', kind: 'temperature' });
  assert.equal(p.match('sensors/aloys'), null);
  assert.equal(p.match('sensors/aloys/temperature/x'), null, 'a placeholder never spans a /');
  assert.equal(p.match('sensors//temperature'), null, 'a placeholder captures at least one character');
  assert.equal(p.match('xsensors/aloys/t'), null, 'anchored at the start');
});

test('a placeholder can be part of a level', () => {
  const p = compilePattern('sensors_{device}/dht');
  assert.deepEqual(p.match('sensors_aloys/dht'), { device: 'aloys' });
  assert.deepEqual(p.match('sensors_esp_0001/dht'), { device: 'esp_0001' });
  assert.equal(p.match('sensors_/dht'), null);
  assert.equal(p.match('sensors_aloys/dht2'), null, 'anchored at the end');
  assert.equal(p.match('sensors/aloys/dht'), null);
  const two = compilePattern('{site}-{device}/reading');
  assert.deepEqual(two.match('lab-a-b/reading'), { site: 'lab', device: 'a-b' }, 'the first separator splits');
});

test('alternatives restrict a placeholder', () => {
  const p = compilePattern('sensors/{device}/{kind:temperature|humidity}');
  assert.deepEqual(p.match('sensors/a/humidity'), { device: 'a', kind: 'humidity' });
  assert.equal(p.match('sensors/a/status'), null);
  assert.equal(p.match('sensors/a/temperatureX'), null);
  // Regex metacharacters in literals and alternatives are literal.
  const q = compilePattern('a.b/{device}/{k:x.y|(z)}');
  assert.deepEqual(q.match('a.b/d/x.y'), { device: 'd', k: 'x.y' });
  assert.equal(q.match('aXb/d/x.y'), null);
  assert.equal(q.match('a.b/d/xZy'), null);
  assert.deepEqual(q.match('a.b/d/(z)'), { device: 'd', k: '(z)' });
});

test('bad patterns are refused with the reason', () => {
  const bad = [
    ['', /non-empty/],
    ['sensors/+/dht', /wildcards/],
    ['sensors/#', /wildcards/],
    ['sensors/{device', /not closed/],
    ['sensors/device}', /without a matching/],
    ['sensors/{}', /placeholder name/],
    ['sensors/{1x}', /placeholder name/],
    ['sensors/{a b}', /placeholder name/],
    ['{device}/{device}', /appears twice/],
    ['{a}{device}', /directly follows/],
    ['s/{k:a||b}/{device}', /alternative/],
    ['s/{k:a/b}/{device}', /alternative/],
  ];
  for (const [pattern, reason] of bad) {
    assert.throws(() => compilePattern(pattern), reason, pattern);
  }
});

test('templates render captured values and refuse unknown names', () => {
  const t = compileTemplate('home/{device}/{quantity}', ['device', 'quantity']);
  assert.equal(t.render({ device: 'aloys', quantity: 'temperature' }), 'home/aloys/temperature');
  assert.equal(t.uses('quantity'), true);
  assert.equal(compileTemplate('home/x', ['device']).render({}), 'home/x');
  assert.throws(() => compileTemplate('home/{room}', ['device']), /`\{room\}` is not known here/);
  assert.throws(() => compileTemplate('home/+/t', ['device']), /wildcards/);
  assert.throws(() => compileTemplate('home/{device:a|b}', ['device']), /only allowed in the topic pattern/);
  assert.throws(() => compileTemplate('', ['device']), /non-empty/);
});

test('numbers: decimal text only', () => {
  for (const [text, value, decimals] of [['25.5', 25.5, 1], ['25', 25, 0], ['25.50', 25.5, 2], ['-3.0', -3, 1],
    ['+4', 4, 0], ['.5', 0.5, 1], ['5.', 5, 0], ['1e2', 100, Infinity], [' 21.5\n', 21.5, 1], ['0', 0, 0]]) {
    assert.deepEqual(parseNumber(text), { value, decimals }, JSON.stringify(text));
  }
  for (const [text, reason] of [['', /empty/], ['  ', /empty/], ['nan', /not a number/], ['NaN', /not a number/],
    ['inf', /not a number/], ['Infinity', /not a number/], ['25,5', /not a number/], ['hot', /not a number/],
    ['0x10', /not a number/], ['1e999', /not a finite number/], ['ERR', /not a number/], ['25.5C', /not a number/],
    ['--1', /not a number/], ['.', /not a number/]]) {
    assert.match(parseNumber(text).error ?? '', reason, JSON.stringify(text));
  }
});

test('rounding is half away from zero without binary artefacts', () => {
  assert.equal(roundTo(25.45, 1), 25.5);
  assert.equal(roundTo(1.005, 2), 1.01);
  assert.equal(roundTo(41.5, 0), 42);
  assert.equal(roundTo(40.5, 0), 41);
  assert.equal(roundTo(-2.5, 0), -3);
  assert.equal(roundTo(-0.04, 1), 0);
  assert.ok(!Object.is(roundTo(-0.04, 1), -0), 'no negative zero');
  assert.equal(roundTo(25.5, undefined), 25.5);
  assert.equal(roundTo(1e-7, 3), 0);
  assert.equal(roundTo(123456789012345678, 2), 123456789012345678);
  assert.equal(roundTo(21.456, 2), 21.46);
});

test('durations for stats_interval', () => {
  assert.equal(parseSeconds(60), 60);
  assert.equal(parseSeconds('60s'), 60);
  assert.equal(parseSeconds('5m'), 300);
  assert.equal(parseSeconds('500ms'), 0.5);
  assert.equal(parseSeconds('0'), 0);
  assert.equal(parseSeconds('soon'), null);
  assert.equal(parseSeconds(-1), null);
});

test('UTF-8 round trip and invalid input', () => {
  assert.deepEqual(utf8Encode('ab'), new Uint8Array([97, 98]));
  assert.deepEqual(utf8Decode(new Uint8Array([97, 98])), { text: 'ab', ok: true });
  const s = 'Küche 25°C 🌡';
  assert.deepEqual(utf8Decode(utf8Encode(s)), { text: s, ok: true });
  const bad = utf8Decode(new Uint8Array([0x32, 0xff, 0x35]));
  assert.equal(bad.ok, false);
  assert.equal(bad.text, '2\ufffd5');
  assert.equal(utf8Decode(new Uint8Array([0xc0, 0x80])).ok, false, 'overlong encoding');
  assert.equal(utf8Decode(new Uint8Array([0xe2, 0x82])).ok, false, 'truncated sequence');
});
