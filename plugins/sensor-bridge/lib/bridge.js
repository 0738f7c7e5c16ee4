// The logic of the sensor-bridge plugin, without any host import: the component entry
// (../sensor-bridge.js) wires it to the broker, and Node's test runner imports it directly
// (../test/). Everything here is plain ES2020 that both QuickJS and Node run.
//
// A bridge is built from the plugin's config (key/value pairs, `rules` as JSON) by
// `createBridge`, which throws a `ConfigError` naming the rule and key on any mistake. Its
// `process(topic, payloadBytes, nowMs)` says whether a rule matched and which messages to
// publish: one structured reading per quantity, or one error per garbage value.

/** The broker accepts at most this many additional messages per transform call. */
export const MAX_ADDITIONAL_MESSAGES = 64;
/** Parsers a rule may name. */
export const PARSERS = ['plain', 'kv', 'csv', 'json'];
/** Quantity names that would collide with the other keys of the output payload. */
const RESERVED_QUANTITIES = ['device', 'unit', 'ts'];
/** Log levels of the host's `log` import, plus `off`. */
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'off'];
/** Longest raw payload copied into an error message. */
export const RAW_IN_ERROR_MAX = 256;

const TOP_KEYS = ['rules', 'error_topic', 'log_errors', 'stats_interval', 'max_payload'];
const RULE_KEYS = [
  'name', 'topic', 'parser', 'quantity', 'fields', 'columns', 'separator', 'output',
  'unit', 'round', 'min', 'max', 'quantities', 'replace', 'error_topic',
];
const QUANTITY_KEYS = ['unit', 'round', 'min', 'max', 'output'];

/** A config mistake; the message names the rule and the key. */
export class ConfigError extends Error {}

// ---------------------------------------------------------------------------------------
// UTF-8 (QuickJS has no TextEncoder/TextDecoder).

const NON_ASCII = /[^\x00-\x7f]/;

/** Decodes UTF-8; invalid sequences become U+FFFD and clear `ok`. */
export function utf8Decode(bytes) {
  // Fast path, without a loop in JavaScript (QuickJS interprets every step): sensor payloads
  // are short ASCII.
  if (bytes.length <= 4096) {
    const latin1 = String.fromCharCode.apply(null, bytes);
    if (!NON_ASCII.test(latin1)) return { text: latin1, ok: true };
  }
  let text = '';
  let ok = true;
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let cp;
    let n;
    if (b < 0x80) { cp = b; n = 1; }
    else if ((b & 0xe0) === 0xc0) { cp = b & 0x1f; n = 2; }
    else if ((b & 0xf0) === 0xe0) { cp = b & 0x0f; n = 3; }
    else if ((b & 0xf8) === 0xf0) { cp = b & 0x07; n = 4; }
    else { text += '\ufffd'; ok = false; i += 1; continue; }
    let good = i + n <= bytes.length;
    for (let j = 1; good && j < n; j++) {
      const c = bytes[i + j];
      if ((c & 0xc0) !== 0x80) good = false;
      else cp = (cp << 6) | (c & 0x3f);
    }
    const min = [0, 0, 0x80, 0x800, 0x10000][n];
    if (!good || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      text += '\ufffd';
      ok = false;
      i += 1;
      continue;
    }
    text += String.fromCodePoint(cp);
    i += n;
  }
  return { text, ok };
}

/** Encodes a string as UTF-8 bytes. */
export function utf8Encode(s) {
  const n = s.length;
  const ascii = new Uint8Array(n);
  let i = 0;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) break;
    ascii[i] = c;
  }
  if (i === n) return ascii; // the usual case: JSON of ASCII topics and numbers
  const out = Array.from(ascii.subarray(0, i));
  for (const ch of s.slice(i)) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return new Uint8Array(out);
}

/** Concatenates byte arrays. */
export function concatBytes(parts) {
  let n = 0;
  for (let i = 0; i < parts.length; i++) n += parts[i].length;
  const out = new Uint8Array(n);
  let at = 0;
  for (let i = 0; i < parts.length; i++) {
    out.set(parts[i], at);
    at += parts[i].length;
  }
  return out;
}

/**
 * A bounded string → UTF-8 cache for the parts of output payloads that repeat (device and
 * quantity prefix, unit suffix, timestamp): encoding character by character is the most
 * expensive step of a reading in QuickJS.
 */
export function byteCache(limit = 4096) {
  const map = new Map();
  return (s) => {
    let b = map.get(s);
    if (b === undefined) {
      if (map.size >= limit) map.clear();
      b = utf8Encode(s);
      map.set(s, b);
    }
    return b;
  };
}

// ---------------------------------------------------------------------------------------
// Topic patterns and templates.

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function escapeRegExp(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Splits `text` into literal parts and `{...}` placeholders. Returns a list of
 * `{ lit }` / `{ name, options }` items; throws a plain Error with the reason.
 */
function tokenize(text, allowOptions) {
  const parts = [];
  let i = 0;
  while (i < text.length) {
    const open = text.indexOf('{', i);
    const close = text.indexOf('}', i);
    if (close !== -1 && (open === -1 || close < open)) throw new Error('`}` without a matching `{`');
    if (open === -1) {
      parts.push({ lit: text.slice(i) });
      break;
    }
    if (open > i) parts.push({ lit: text.slice(i, open) });
    const end = text.indexOf('}', open);
    if (end === -1) throw new Error('`{` is not closed');
    const inner = text.slice(open + 1, end);
    if (inner.includes('{')) throw new Error('placeholders cannot be nested');
    const colon = inner.indexOf(':');
    const name = colon === -1 ? inner : inner.slice(0, colon);
    if (!NAME.test(name)) {
      throw new Error(`\`{${inner}}\`: a placeholder name is letters, digits and _ (not starting with a digit)`);
    }
    let options = null;
    if (colon !== -1) {
      if (!allowOptions) throw new Error(`\`{${inner}}\`: alternatives are only allowed in the topic pattern`);
      options = inner.slice(colon + 1).split('|');
      for (const o of options) {
        if (o === '' || /[/+#]/.test(o)) {
          throw new Error(`\`{${inner}}\`: each alternative must be non-empty text without /, + or #`);
        }
      }
    }
    parts.push({ name, options });
    i = end + 1;
  }
  return parts;
}

/**
 * Compiles a topic pattern such as `sensors/{device}/{kind}`, `sensors_{device}/dht` or
 * `sensors/{device}/{kind:temperature|humidity}` into a matcher. A placeholder captures
 * one or more characters of a single topic level; with alternatives it matches exactly
 * one of them. Throws a plain Error with the reason.
 */
export function compilePattern(pattern) {
  if (typeof pattern !== 'string' || pattern === '') throw new Error('must be a non-empty topic pattern');
  if (/[+#]/.test(pattern)) {
    throw new Error('MQTT wildcards + and # are not allowed: name a level with {name} instead');
  }
  const parts = tokenize(pattern, true);
  const names = [];
  let source = '^';
  let previousWasPlaceholder = false;
  for (const p of parts) {
    if (p.lit !== undefined) {
      source += escapeRegExp(p.lit);
      previousWasPlaceholder = false;
      continue;
    }
    if (previousWasPlaceholder) {
      throw new Error(`\`{${p.name}}\` directly follows another placeholder: separate them with literal text`);
    }
    if (names.includes(p.name)) throw new Error(`\`{${p.name}}\` appears twice`);
    names.push(p.name);
    source += p.options ? `(${p.options.map(escapeRegExp).join('|')})` : '([^/]+?)';
    previousWasPlaceholder = true;
  }
  const regex = new RegExp(source + '$');
  // A cheap test before the regular expression: most topics differ from the first character.
  const prefix = parts.length > 0 && parts[0].lit !== undefined ? parts[0].lit : '';
  return {
    pattern,
    names,
    match(topic) {
      if (prefix !== '' && !topic.startsWith(prefix)) return null;
      const m = regex.exec(topic);
      if (m === null) return null;
      const captures = {};
      for (let k = 0; k < names.length; k++) captures[names[k]] = m[k + 1];
      return captures;
    },
  };
}

/**
 * Compiles a template such as `home/{device}/{quantity}`; `known` lists the names it may
 * use. Throws a plain Error with the reason.
 */
export function compileTemplate(template, known, what = 'template') {
  if (typeof template !== 'string' || template === '') throw new Error(`must be a non-empty ${what}`);
  if (/[+#]/.test(template)) throw new Error('MQTT wildcards + and # are not allowed in a topic');
  const parts = tokenize(template, false);
  for (const p of parts) {
    if (p.name !== undefined && !known.includes(p.name)) {
      throw new Error(`\`{${p.name}}\` is not known here (known: ${known.map((k) => `{${k}}`).join(', ')})`);
    }
  }
  return {
    template,
    uses: (name) => parts.some((p) => p.name === name),
    render(values) {
      let out = '';
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i];
        out += p.lit !== undefined ? p.lit : values[p.name];
      }
      return out;
    },
  };
}

// ---------------------------------------------------------------------------------------
// Numbers.

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * Parses one reading. Accepts decimal text (`25`, `25.50`, `-3.0`, `1e2`, surrounding
 * spaces); refuses `nan`, `inf`, empty text, `25,5`, hex and anything else, with a reason.
 */
export function parseNumber(text) {
  const t = text.trim();
  if (t === '') return { error: 'empty value' };
  const m = NUMBER.exec(t);
  if (m === null) return { error: `not a number: ${JSON.stringify(truncate(t, 40))}` };
  const v = Number(t);
  if (!Number.isFinite(v)) return { error: `not a finite number: ${JSON.stringify(truncate(t, 40))}` };
  // Digits after the point, when the text has no exponent (then rounding to as many or
  // more decimals changes nothing and can be skipped).
  const dot = t.indexOf('.');
  const decimals = m[2] !== undefined ? Infinity : dot === -1 ? 0 : t.length - dot - 1;
  return { value: v, decimals };
}

/** Rounds half away from zero to `decimals` places, without binary artefacts (1.005 → 1.01). */
export function roundTo(v, decimals) {
  if (decimals === undefined || !Number.isFinite(v)) return v;
  const a = Math.abs(v);
  if (a >= 1e15) return v; // no decimals worth rounding at this magnitude
  let r;
  if (String(a).includes('e')) { // tiny: `${a}e${d}` would not parse
    const f = 10 ** decimals;
    r = Math.round(a * f) / f;
  } else {
    r = Number(Math.round(Number(`${a}e${decimals}`)) + `e-${decimals}`);
  }
  r = v < 0 ? -r : r;
  return r === 0 ? 0 : r; // no -0 in the output
}

function truncate(s, n) {
  return s.length > n ? s.slice(0, n) + '…' : s;
}

// ---------------------------------------------------------------------------------------
// Payload parsers: each returns [{ quantity, text | value | error }] for the rule's quantities.

/** `25.5` → one reading of the rule's quantity. */
export function parsePlain(text, quantity) {
  return [{ quantity, text }];
}

/** `t=25.5,h=40.1` (pairs split by `separator`, key and value by `=` or `:`). */
export function parseKv(text, fields, separator = ',') {
  const values = new Map();
  const duplicates = new Set();
  if (text.trim() !== '') {
    for (const pair of text.split(separator)) {
      if (pair.trim() === '') continue;
      const at = pair.search(/[=:]/);
      if (at === -1) continue; // a fragment without a key matches no field
      const key = pair.slice(0, at).trim();
      if (values.has(key)) duplicates.add(key);
      else values.set(key, pair.slice(at + 1));
    }
  }
  return fields.map(([key, quantity]) => {
    if (text.trim() === '') return { quantity, error: 'empty payload' };
    if (duplicates.has(key)) return { quantity, error: `key \`${key}\` appears more than once` };
    if (!values.has(key)) return { quantity, error: `missing key \`${key}\`` };
    return { quantity, text: values.get(key) };
  });
}

/** `25.5,40.1` → one reading per named column (columns named null are skipped). */
export function parseCsv(text, columns, separator = ',') {
  const cells = text.trim() === '' ? [] : text.split(separator);
  const out = [];
  columns.forEach((quantity, i) => {
    if (quantity === null) return;
    if (cells.length === 0) out.push({ quantity, error: 'empty payload' });
    else if (i >= cells.length) {
      out.push({ quantity, error: `missing column ${i + 1} (the payload has ${cells.length})` });
    } else out.push({ quantity, text: cells[i] });
  });
  return out;
}

/** `{"temp":25.5,"hum":40.1}`; field paths may go into objects (`env.temp`). */
export function parseJson(text, fields) {
  let doc;
  const fail = (error) => fields.map(([, quantity]) => ({ quantity, error }));
  if (text.trim() === '') return fail('empty payload');
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return fail(`unparsable JSON: ${truncate(String(e && e.message ? e.message : e), 80)}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return fail('JSON payload is not an object');
  return fields.map(([path, quantity]) => {
    let v = doc;
    for (const key of path.split('.')) {
      v = v !== null && typeof v === 'object' && !Array.isArray(v) && Object.prototype.hasOwnProperty.call(v, key)
        ? v[key]
        : undefined;
    }
    if (v === undefined) return { quantity, error: `missing field \`${path}\`` };
    if (typeof v === 'number') return { quantity, value: v };
    if (typeof v === 'string') return { quantity, text: v };
    const kind = v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
    return { quantity, error: `field \`${path}\` is ${kind}, not a number` };
  });
}

// ---------------------------------------------------------------------------------------
// Config.

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function checkKeys(obj, allowed, where) {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw new ConfigError(`${where}unknown key \`${k}\` (known: ${allowed.join(', ')})`);
  }
}

function toBool(v, fail) {
  if (v === undefined) return false;
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  throw fail('must be true or false');
}

function toNumber(v, fail) {
  if (v === undefined) return undefined;
  const n = typeof v === 'number' ? v : typeof v === 'string' && NUMBER.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isFinite(n)) throw fail('must be a number');
  return n;
}

function toDecimals(v, fail) {
  const n = toNumber(v, fail);
  if (n !== undefined && !(Number.isInteger(n) && n >= 0 && n <= 10)) throw fail('must be a whole number of decimals from 0 to 10');
  return n;
}

function checkQuantityName(q, fail) {
  if (typeof q !== 'string' || q === '') throw fail('quantity names must be non-empty strings');
  if (RESERVED_QUANTITIES.includes(q)) throw fail(`\`${q}\` cannot be a quantity name: the output payload uses that key itself`);
}

/** Seconds from `60`, `"60s"`, `"500ms"`, `"5m"`, `"1h"`; 0 turns it off. */
export function parseSeconds(v) {
  if (typeof v === 'number' && v >= 0) return v;
  const m = typeof v === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(v) : null;
  if (m === null) return null;
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] ?? 's'];
  return Number(m[1]) * unit;
}

/** Parses one element of `rules`; `i` is its index. */
export function parseRule(raw, i, defaults = {}) {
  const label = isPlainObject(raw) && typeof raw.name === 'string' && raw.name !== ''
    ? `rules[${i}] (${raw.name})`
    : `rules[${i}]`;
  const where = `${label}: `;
  const at = (key) => (reason) => new ConfigError(`${label}: key \`${key}\`: ${reason}`);
  if (!isPlainObject(raw)) throw new ConfigError(`${where}each rule must be a map with at least \`topic\` and \`output\``);
  checkKeys(raw, RULE_KEYS, where);
  if (raw.name !== undefined && (typeof raw.name !== 'string' || raw.name === '')) throw at('name')('must be a non-empty string');
  const name = raw.name ?? `rules[${i}]`;

  if (raw.topic === undefined) throw at('topic')('is required (a topic pattern such as `sensors/{device}/{kind}`)');
  let pattern;
  try {
    pattern = compilePattern(raw.topic);
  } catch (e) {
    throw at('topic')(e.message);
  }
  if (pattern.names.includes('output')) {
    throw at('topic')('`{output}` cannot be captured: error_topic uses that name for the output topic');
  }
  if (!pattern.names.includes('device')) {
    throw at('topic')('the pattern must capture the device with `{device}` (e.g. `sensors/{device}/temperature`)');
  }

  const parser = raw.parser ?? 'plain';
  if (!PARSERS.includes(parser)) throw at('parser')(`unknown parser \`${parser}\` (use plain, kv, csv or json)`);
  if (raw.separator !== undefined && parser !== 'kv' && parser !== 'csv') throw at('separator')('only applies to the kv and csv parsers');
  if (raw.separator !== undefined && (typeof raw.separator !== 'string' || raw.separator === '')) throw at('separator')('must be a non-empty string');
  const separator = raw.separator ?? ',';

  // What the parser extracts: plain → one quantity (a template over the captures);
  // kv/json → `fields` (payload key or path → quantity); csv → `columns`.
  let quantity = null;
  let fields = null;
  let columns = null;
  let staticQuantities = [];
  if (parser === 'plain') {
    if (raw.fields !== undefined) throw at('fields')('only applies to the kv and json parsers');
    if (raw.columns !== undefined) throw at('columns')('only applies to the csv parser');
    if (raw.quantity === undefined) throw at('quantity')('is required with parser plain: the name of the reading, e.g. `temperature` or `{kind}`');
    try {
      quantity = compileTemplate(raw.quantity, pattern.names, 'quantity name');
    } catch (e) {
      throw at('quantity')(e.message);
    }
    if (!pattern.names.some((n) => quantity.uses(n))) {
      checkQuantityName(raw.quantity, at('quantity'));
      staticQuantities = [raw.quantity];
    }
  } else if (parser === 'csv') {
    if (raw.quantity !== undefined) throw at('quantity')('only applies to the plain parser (use `columns`)');
    if (raw.fields !== undefined) throw at('fields')('only applies to the kv and json parsers (use `columns`)');
    if (!Array.isArray(raw.columns) || raw.columns.length === 0) {
      throw at('columns')('is required with parser csv: a list of quantity names, one per column (null or "" skips a column)');
    }
    columns = raw.columns.map((c) => (c === null || c === '' ? null : c));
    columns.forEach((c) => { if (c !== null) checkQuantityName(c, at('columns')); });
    staticQuantities = columns.filter((c) => c !== null);
    if (staticQuantities.length === 0) throw at('columns')('names no quantity');
  } else {
    if (raw.quantity !== undefined) throw at('quantity')('only applies to the plain parser (use `fields`)');
    if (raw.columns !== undefined) throw at('columns')('only applies to the csv parser (use `fields`)');
    if (Array.isArray(raw.fields)) {
      fields = raw.fields.map((f) => [f, f]);
    } else if (isPlainObject(raw.fields)) {
      fields = Object.entries(raw.fields);
    } else {
      throw at('fields')(`is required with parser ${parser}: a map from payload ${parser === 'kv' ? 'key' : 'field'} to quantity name (e.g. {t: temperature, h: humidity}), or a list of names`);
    }
    if (fields.length === 0) throw at('fields')('names no quantity');
    for (const [key, q] of fields) {
      if (typeof key !== 'string' || key === '') throw at('fields')('payload keys must be non-empty strings');
      checkQuantityName(q, at('fields'));
    }
    staticQuantities = fields.map(([, q]) => q);
  }
  if (new Set(staticQuantities).size !== staticQuantities.length) {
    throw at(parser === 'csv' ? 'columns' : 'fields')('names a quantity twice');
  }
  if (staticQuantities.length > MAX_ADDITIONAL_MESSAGES) {
    throw at(parser === 'csv' ? 'columns' : 'fields')(`names ${staticQuantities.length} quantities; at most ${MAX_ADDITIONAL_MESSAGES} (the broker's limit of additional messages per publish)`);
  }

  const templateNames = [...pattern.names.filter((n) => n !== 'quantity'), 'quantity'];
  if (raw.output === undefined) throw at('output')('is required: the topic template of the structured reading, e.g. `home/{device}/{quantity}`');
  const compileOutput = (t, key) => {
    try {
      return compileTemplate(t, templateNames, 'topic template');
    } catch (e) {
      throw at(key)(e.message);
    }
  };
  const output = compileOutput(raw.output, 'output');

  const base = {
    unit: raw.unit,
    round: toDecimals(raw.round, at('round')),
    min: toNumber(raw.min, at('min')),
    max: toNumber(raw.max, at('max')),
  };
  if (base.unit !== undefined && typeof base.unit !== 'string') throw at('unit')('must be a string');
  if (base.min !== undefined && base.max !== undefined && base.min > base.max) throw at('max')(`is below min (${base.min})`);

  const perQuantity = new Map();
  if (raw.quantities !== undefined) {
    if (!isPlainObject(raw.quantities)) throw at('quantities')('must be a map from quantity name to {unit, round, min, max, output}');
    for (const [q, s] of Object.entries(raw.quantities)) {
      const key = `quantities.${q}`;
      if (!isPlainObject(s)) throw at(key)('must be a map with unit, round, min, max or output');
      checkQuantityName(q, at('quantities'));
      checkKeys(s, QUANTITY_KEYS, `${label}: key \`${key}\`: `);
      if (staticQuantities.length > 0 && !staticQuantities.includes(q)) {
        throw at(key)(`\`${q}\` is not one of this rule's quantities (${staticQuantities.join(', ')})`);
      }
      const merged = {
        unit: s.unit ?? base.unit,
        round: s.round !== undefined ? toDecimals(s.round, at(`${key}.round`)) : base.round,
        min: s.min !== undefined ? toNumber(s.min, at(`${key}.min`)) : base.min,
        max: s.max !== undefined ? toNumber(s.max, at(`${key}.max`)) : base.max,
        output: s.output !== undefined ? compileOutput(s.output, `${key}.output`) : output,
      };
      if (merged.unit !== undefined && typeof merged.unit !== 'string') throw at(`${key}.unit`)('must be a string');
      if (merged.min !== undefined && merged.max !== undefined && merged.min > merged.max) throw at(`${key}.max`)(`is below min (${merged.min})`);
      perQuantity.set(q, merged);
    }
  }
  // Several quantities on one fixed topic would be indistinguishable.
  if (staticQuantities.length > 1) {
    const topics = staticQuantities.map((q) => (perQuantity.get(q)?.output ?? output));
    const fixed = topics.filter((t) => !t.uses('quantity'));
    if (fixed.length > 0 && new Set(fixed.map((t) => t.template)).size !== fixed.length) {
      throw at('output')(`the parser yields several quantities (${staticQuantities.join(', ')}): use {quantity} in the template, or give each its own \`quantities.<name>.output\``);
    }
  }

  let errorTopic;
  try {
    errorTopic = compileTemplate(raw.error_topic ?? defaults.errorTopic ?? '{output}/error',
      [...templateNames, 'output'], 'topic template');
  } catch (e) {
    throw at('error_topic')(e.message);
  }

  const replace = toBool(raw.replace, at('replace'));
  const ruleSettings = { ...base, output };
  const settings = (q) => perQuantity.get(q) ?? ruleSettings;

  return {
    name,
    pattern,
    parser,
    replace,
    errorTopic,
    settings,
    /** Readings of the payload text for the captured topic values. */
    extract(text, captures) {
      switch (parser) {
        case 'plain': return parsePlain(text, quantity.render(captures));
        case 'kv': return parseKv(text, fields, separator);
        case 'csv': return parseCsv(text, columns, separator);
        default: return parseJson(text, fields);
      }
    },
  };
}

/** Parses the whole config (the pairs `init` receives). */
export function parseConfig(pairs) {
  const settings = {};
  for (const [k, v] of pairs) settings[k] = v;
  checkKeys(settings, TOP_KEYS, 'config: ');
  if (settings.rules === undefined || settings.rules === '') {
    throw new ConfigError('config key `rules` is required: a list of rules, each with at least `topic` and `output`');
  }
  let rules;
  try {
    rules = JSON.parse(settings.rules);
  } catch (e) {
    throw new ConfigError(`config key \`rules\` is not a list of rules (JSON): ${e.message}`);
  }
  if (!Array.isArray(rules) || rules.length === 0) {
    throw new ConfigError('config key `rules` must be a non-empty list of rules');
  }
  const logErrors = settings.log_errors ?? 'warn';
  if (!LOG_LEVELS.includes(logErrors)) {
    throw new ConfigError(`config key \`log_errors\`: \`${logErrors}\` is not one of ${LOG_LEVELS.join(', ')}`);
  }
  const statsSeconds = parseSeconds(settings.stats_interval === undefined ? 60 : settings.stats_interval);
  if (statsSeconds === null) {
    throw new ConfigError('config key `stats_interval`: must be a duration such as 60s, 5m or 0 (off)');
  }
  const maxPayload = settings.max_payload === undefined ? 1024 : Number(settings.max_payload);
  if (!Number.isInteger(maxPayload) || maxPayload < 1) {
    throw new ConfigError('config key `max_payload`: must be a whole number of bytes, at least 1');
  }
  const defaults = { errorTopic: settings.error_topic };
  const parsed = rules.map((r, i) => parseRule(r, i, defaults));
  const names = new Set();
  for (const r of parsed) {
    if (names.has(r.name)) throw new ConfigError(`rules: the name \`${r.name}\` is used twice`);
    names.add(r.name);
  }
  return { rules: parsed, logErrors, statsMillis: statsSeconds * 1000, maxPayload };
}

// ---------------------------------------------------------------------------------------
// Processing one message.

function jsonString(s) {
  return JSON.stringify(s);
}

/**
 * A bridge: the parsed config plus counters. `process(topic, payload, now)` returns `null`
 * when no rule matches, else `{ rule, device, replace, outputs: [{topic, payload, error}],
 * problems, raw }`, where `payload` is the UTF-8 bytes of a JSON object and `problems` lists
 * the garbage readings (for the log). `now` gives the broker time in ms (called only when a rule matches).
 */
export function createBridge(pairs) {
  const config = parseConfig(pairs);
  const rules = config.rules;
  const counters = { messages: 0, matched: 0, readings: 0, garbage: 0, unmatched: 0 };
  const perRule = new Map(rules.map((r) => [r.name, { matched: 0, readings: 0, garbage: 0 }]));
  const cached = byteCache();
  const CLOSE = utf8Encode('}');
  let tsMs = -1;
  let tsBytes = null;

  function process(topic, payload, now) {
    counters.messages += 1;
    let rule = null;
    let captures = null;
    for (let i = 0; i < rules.length; i++) {
      captures = rules[i].pattern.match(topic);
      if (captures !== null) { rule = rules[i]; break; }
    }
    if (rule === null) {
      counters.unmatched += 1;
      return null;
    }
    counters.matched += 1;
    const ruleCounters = perRule.get(rule.name);
    ruleCounters.matched += 1;
    const nowMs = now();

    const tooLarge = payload.length > config.maxPayload;
    const { text, ok } = utf8Decode(tooLarge ? payload.subarray(0, RAW_IN_ERROR_MAX) : payload);
    let readings;
    if (tooLarge || !ok) {
      const error = tooLarge
        ? `payload too large (${payload.length} bytes; max_payload is ${config.maxPayload})`
        : 'payload is not UTF-8';
      readings = rule.extract('', captures).map((r) => ({ quantity: r.quantity, error }));
    } else {
      readings = rule.extract(text, captures);
    }

    const device = captures.device;
    const deviceJson = jsonString(device);
    const outputs = [];
    const problems = [];
    let errorTopics = null;
    const raw = text.length > RAW_IN_ERROR_MAX ? text.slice(0, RAW_IN_ERROR_MAX) : text;
    for (let i = 0; i < readings.length; i++) {
      const reading = readings[i];
      const quantity = reading.quantity;
      const s = rule.settings(quantity);
      captures.quantity = quantity; // the template values: captures plus {quantity}
      const outTopic = s.output.render(captures);
      let error = reading.error;
      let value = reading.value;
      if (error === undefined && RESERVED_QUANTITIES.includes(quantity)) {
        error = `\`${quantity}\` cannot be a quantity name: the output payload uses that key itself`;
      }
      let decimals = Infinity;
      if (error === undefined && value === undefined) {
        const n = parseNumber(reading.text);
        error = n.error;
        value = n.value;
        decimals = n.decimals;
      }
      if (error === undefined && !Number.isFinite(value)) error = 'not a finite number';
      if (error === undefined && s.min !== undefined && value < s.min) error = `out of range: ${value} is below min ${s.min}`;
      if (error === undefined && s.max !== undefined && value > s.max) error = `out of range: ${value} is above max ${s.max}`;
      if (error !== undefined) {
        counters.garbage += 1;
        ruleCounters.garbage += 1;
        problems.push({ quantity, reason: error });
        captures.output = outTopic;
        const errTopic = rule.errorTopic.render(captures);
        // One error per topic: a payload-wide failure does not repeat itself on a shared topic.
        if (errorTopics === null) errorTopics = new Set();
        if (errorTopics.has(errTopic)) continue;
        errorTopics.add(errTopic);
        if (tsMs !== nowMs) {
          tsMs = nowMs;
          tsBytes = utf8Encode(String(nowMs));
        }
        outputs.push({
          topic: errTopic,
          error: true,
          // {"device":…,"quantity":…,"topic":…,"raw":…,"reason":…,"ts":…}
          payload: concatBytes([
            cached(`{"device":${deviceJson},"quantity":${jsonString(quantity)},"topic":${jsonString(topic)},"raw":`),
            utf8Encode(`${jsonString(raw)},"reason":${jsonString(error)},"ts":`),
            tsBytes,
            CLOSE,
          ]),
        });
        continue;
      }
      counters.readings += 1;
      ruleCounters.readings += 1;
      const rounded = s.round === undefined || decimals <= s.round ? value : roundTo(value, s.round);
      // {"device":"aloys","temperature":25.5,"unit":"C","ts":1795000000000}, assembled from
      // cached bytes around the number.
      if (tsMs !== nowMs) {
        tsMs = nowMs;
        tsBytes = utf8Encode(String(nowMs));
      }
      outputs.push({
        topic: outTopic,
        error: false,
        payload: concatBytes([
          cached(`{"device":${deviceJson},${jsonString(quantity)}:`),
          utf8Encode(jsonString(rounded === 0 ? 0 : rounded)),
          s.unit !== undefined ? cached(`,"unit":${jsonString(s.unit)},"ts":`) : cached(',"ts":'),
          tsBytes,
          CLOSE,
        ]),
      });
    }
    if (outputs.length > MAX_ADDITIONAL_MESSAGES) outputs.length = MAX_ADDITIONAL_MESSAGES;
    return { rule: rule.name, device, replace: rule.replace, outputs, problems, raw };
  }

  function statsLine() {
    const rules = [...perRule.entries()]
      .map(([n, c]) => `${n}: ${c.matched} matched, ${c.readings} readings, ${c.garbage} garbage`)
      .join('; ');
    return `sensor-bridge stats (this instance): ${counters.messages} messages, ${counters.matched} matched, `
      + `${counters.readings} readings out, ${counters.garbage} garbage, ${counters.unmatched} not matched; ${rules}`;
  }

  return { config, counters, perRule, process, statsLine };
}
