// Unit tests of the payload parsers (node --test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePlain, parseKv, parseCsv, parseJson } from '../lib/bridge.js';

const TH = [['t', 'temperature'], ['h', 'humidity']];

test('plain: the whole payload is one reading', () => {
  assert.deepEqual(parsePlain('25.5', 'temperature'), [{ quantity: 'temperature', text: '25.5' }]);
});

test('kv: key=value pairs', () => {
  assert.deepEqual(parseKv('t=25.5,h=40.1', TH), [
    { quantity: 'temperature', text: '25.5' },
    { quantity: 'humidity', text: '40.1' },
  ]);
  // Order, spaces, `:` as the assignment, unknown keys and empty pairs do not matter.
  assert.deepEqual(parseKv(' h: 40.1 , x=1,, t=25.5', TH), [
    { quantity: 'temperature', text: '25.5' },
    { quantity: 'humidity', text: ' 40.1 ' },
  ]);
  assert.deepEqual(parseKv('t=25.5;h=40.1', TH, ';').map((r) => r.text), ['25.5', '40.1']);
});

test('kv: missing, duplicated and empty', () => {
  assert.deepEqual(parseKv('t=25.5', TH), [
    { quantity: 'temperature', text: '25.5' },
    { quantity: 'humidity', error: 'missing key `h`' },
  ]);
  assert.deepEqual(parseKv('t=1,t=2,h=3', TH)[0], { quantity: 'temperature', error: 'key `t` appears more than once' });
  assert.deepEqual(parseKv('', TH).map((r) => r.error), ['empty payload', 'empty payload']);
  // A value that is garbage is passed on as text: the number check names it.
  assert.deepEqual(parseKv('t=nan,h=', TH).map((r) => r.text), ['nan', '']);
  assert.deepEqual(parseKv('garbage', TH).map((r) => r.error), ['missing key `t`', 'missing key `h`']);
});

test('csv: named columns, skipped columns, missing columns', () => {
  assert.deepEqual(parseCsv('25.5,40.1', ['temperature', 'humidity']), [
    { quantity: 'temperature', text: '25.5' },
    { quantity: 'humidity', text: '40.1' },
  ]);
  assert.deepEqual(parseCsv('1700000000,25.5,40.1,extra', [null, 'temperature', 'humidity']).map((r) => r.text), ['25.5', '40.1']);
  assert.deepEqual(parseCsv('25.5', ['temperature', 'humidity'])[1], {
    quantity: 'humidity', error: 'missing column 2 (the payload has 1)',
  });
  assert.deepEqual(parseCsv('25.5;40.1', ['temperature', 'humidity'], ';').map((r) => r.text), ['25.5', '40.1']);
  assert.deepEqual(parseCsv('', ['temperature']), [{ quantity: 'temperature', error: 'empty payload' }]);
  // `25,5` with the default separator is two columns: the second quantity gets `5`. With a
  // single column it is `25`: CSV cannot tell; the README warns about decimal commas.
  assert.deepEqual(parseCsv('25,5', ['temperature', 'humidity']).map((r) => r.text), ['25', '5']);
});

test('json: fields, nested paths, numeric strings', () => {
  const fields = [['temp', 'temperature'], ['env.hum', 'humidity']];
  assert.deepEqual(parseJson('{"temp":25.5,"env":{"hum":40.1}}', fields), [
    { quantity: 'temperature', value: 25.5 },
    { quantity: 'humidity', value: 40.1 },
  ]);
  assert.deepEqual(parseJson('{"temp":"25.5","env":{}}', fields), [
    { quantity: 'temperature', text: '25.5' },
    { quantity: 'humidity', error: 'missing field `env.hum`' },
  ]);
});

test('json: garbage', () => {
  const fields = [['temp', 'temperature']];
  assert.match(parseJson('{"temp":', fields)[0].error, /^unparsable JSON: /);
  assert.match(parseJson('nan', fields)[0].error, /^unparsable JSON: /);
  assert.equal(parseJson('', fields)[0].error, 'empty payload');
  assert.equal(parseJson('25.5', fields)[0].error, 'JSON payload is not an object');
  assert.equal(parseJson('[1]', fields)[0].error, 'JSON payload is not an object');
  assert.equal(parseJson('{"temp":null}', fields)[0].error, 'field `temp` is null, not a number');
  assert.equal(parseJson('{"temp":true}', fields)[0].error, 'field `temp` is a boolean, not a number');
  assert.equal(parseJson('{"temp":[1]}', fields)[0].error, 'field `temp` is a list, not a number');
  assert.equal(parseJson('{"temp":{"c":1}}', fields)[0].error, 'field `temp` is an object, not a number');
  // Inherited properties are not fields.
  assert.equal(parseJson('{}', [['constructor', 'temperature']])[0].error, 'missing field `constructor`');
  // Every field of an unparsable payload gets the same reason.
  const two = parseJson('oops', [['a', 'x'], ['b', 'y']]);
  assert.equal(two.length, 2);
  assert.equal(two[0].error, two[1].error);
});
