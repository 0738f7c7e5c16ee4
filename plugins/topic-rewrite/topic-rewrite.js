// topic-rewrite: an mqtt-broker transformer plugin in JavaScript (built with jco).
//
// Rewrites topic prefixes per config and stamps JSON object payloads with the broker time.
// In `copy` mode the original message is kept and the rewritten one is added (a bridge that
// keeps the raw reading and adds a structured one); in `replace` mode it is replaced.
// See README.md for the config keys.

import { log, nowMillis } from 'mqtt-broker:plugin/host@0.1.0';

// [fromPrefix, toPrefix] pairs, longest prefix first, so the most specific rule wins.
let rules = [];
let mode = 'replace';
let stampField = 'broker_time';

// The QuickJS backend has no TextEncoder/TextDecoder, so UTF-8 is converted by hand.
function utf8Decode(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let cp;
    let n;
    if (b < 0x80) { cp = b; n = 1; }
    else if ((b & 0xe0) === 0xc0) { cp = b & 0x1f; n = 2; }
    else if ((b & 0xf0) === 0xe0) { cp = b & 0x0f; n = 3; }
    else if ((b & 0xf8) === 0xf0) { cp = b & 0x07; n = 4; }
    else { return null; }
    if (i + n > bytes.length) return null;
    for (let j = 1; j < n; j++) {
      const c = bytes[i + j];
      if ((c & 0xc0) !== 0x80) return null;
      cp = (cp << 6) | (c & 0x3f);
    }
    out += String.fromCodePoint(cp);
    i += n;
  }
  return out;
}

function utf8Encode(s) {
  const out = [];
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return new Uint8Array(out);
}

// Returns the rewritten topic, or null when no rule matches.
export function rewriteTopic(topic) {
  for (const [from, to] of rules) {
    if (topic.startsWith(from)) return to + topic.slice(from.length);
  }
  return null;
}

// Adds the broker time to a JSON object payload; other payloads are returned unchanged.
function stamp(payload) {
  const text = utf8Decode(payload);
  if (text === null) return payload;
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return payload;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return payload;
  value[stampField] = Number(nowMillis());
  return utf8Encode(JSON.stringify(value));
}

export const lifecycle = {
  init(config) {
    const settings = Object.fromEntries(config);
    let parsed;
    try {
      parsed = JSON.parse(settings.rules ?? '{}');
    } catch (e) {
      throw `config key \`rules\` must be a map of topic prefixes: ${e}`;
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw 'config key `rules` must be a map from old topic prefix to new topic prefix';
    }
    rules = Object.entries(parsed).map(([from, to]) => [String(from), String(to)]);
    if (rules.length === 0) throw 'config key `rules` must contain at least one rule';
    rules.sort((a, b) => b[0].length - a[0].length);
    mode = settings.mode ?? 'replace';
    if (mode !== 'replace' && mode !== 'copy') throw 'config key `mode` must be `replace` or `copy`';
    stampField = settings.stamp_field ?? 'broker_time';
    log('info', `topic-rewrite ready: ${rules.length} rule(s), mode ${mode}`);
  },
};

export const transform = {
  transform(client, message) {
    const topic = rewriteTopic(message.topic);
    if (topic === null) return { action: { tag: 'keep' }, additional: [] };
    const rewritten = {
      topic,
      payload: stamp(message.payload),
      qos: message.qos,
      retain: message.retain,
    };
    if (mode === 'copy') return { action: { tag: 'keep' }, additional: [rewritten] };
    return { action: { tag: 'replace', val: rewritten }, additional: [] };
  },
};
