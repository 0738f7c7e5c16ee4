// fast-rules.wasm: a test plugin for the `fast-transform` hook (world `fast-transformer`,
// tests/plugins_v02.rs). Everything it learns and produces goes through the `current`
// interface; the topic prefix picks the rule:
//   fast/drop/...      -> drop
//   fast/replace/X     -> replace with `replaced/X`, payload "<payload> <client id>", same
//                         QoS and retain
//   fast/add/X         -> keep, and add `added/X` with the topic's length (decimal) as payload,
//                         at the message's QoS
//   fast/props/X       -> keep, and add `props/X` with the user properties as `k=v;k=v`
//   fast/read/X        -> keep, and add `read/X` with what current.read-message gives:
//                         `<topic>|<payload>|<qos 0-2>|<retain 0/1>|<received-millis>`
//                         (QoS 0, not retained)
//   fast/noreplace/... -> answer replace without calling current.replace (a failed call)
//   fast/toomany/...   -> add `toomany/added` 65 times (payloads 0..64); on the first error
//                         replace with `toomany/error` carrying the error
//   fast/badtopic/...  -> add `bad/+/topic`; on the error replace with `badtopic/error`
//                         carrying the error
//   anything else      -> keep
//
// Memory (wit-bindgen C bindings): what an import returns (strings, lists, the error of a
// result) is allocated in this module with malloc and is ours to free; what we pass to an
// import stays ours too.
//
// Build: bash build.sh.
#include "gen/fast-rules/fast_transformer.h"
#include <stdlib.h>
#include <string.h>

typedef exports_mqtt_broker_plugin_fast_transform_verdict_t verdict_t;
#define KEEP EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP
#define DROP EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_DROP
#define REPLACE EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_REPLACE

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               fast_transformer_string_t *err) {
    (void)err;
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    return true;
}

// Writes `n` in decimal into `buf` (room for 20 digits); returns the length. (No snprintf:
// stdio would pull in WASI imports.)
static size_t decimal(uint64_t n, char *buf) {
    char tmp[20];
    size_t len = 0;
    do {
        tmp[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    for (size_t i = 0; i < len; i++) {
        buf[i] = tmp[len - 1 - i];
    }
    return len;
}

static bool starts_with(const fast_transformer_string_t *s, const char *prefix, size_t *rest) {
    size_t n = strlen(prefix);
    if (s->len < n || memcmp(s->ptr, prefix, n) != 0) {
        return false;
    }
    *rest = n;
    return true;
}

// An outgoing message without properties; `topic` is `prefix` followed by `tail`, both
// copied (free with out_free), `payload` borrowed.
static mqtt_broker_plugin_current_outgoing_message_t out_message(const char *prefix, const uint8_t *tail,
                                                                  size_t tail_len, uint8_t *payload,
                                                                  size_t payload_len,
                                                                  mqtt_broker_plugin_current_qos_t qos,
                                                                  bool retain) {
    mqtt_broker_plugin_current_outgoing_message_t m;
    memset(&m, 0, sizeof m);
    size_t p = strlen(prefix);
    m.topic.ptr = malloc(p + tail_len + 1);
    memcpy(m.topic.ptr, prefix, p);
    if (tail_len > 0) {
        memcpy(m.topic.ptr + p, tail, tail_len);
    }
    m.topic.len = p + tail_len;
    m.payload.ptr = payload;
    m.payload.len = payload_len;
    m.qos = qos;
    m.retain = retain;
    m.properties.is_some = false;
    return m;
}

static void out_free(mqtt_broker_plugin_current_outgoing_message_t *m) {
    free(m->topic.ptr);
    m->topic.ptr = NULL;
    m->topic.len = 0;
}

// Hands `m` to current.add (an error is dropped: the test rules add only valid topics) and
// frees its topic; its payload stays the caller's.
static void add_and_free(mqtt_broker_plugin_current_outgoing_message_t *m) {
    fast_transformer_string_t err;
    if (!mqtt_broker_plugin_current_add(m, &err)) {
        fast_transformer_string_free(&err);
    }
    out_free(m);
}

// Hands `m` (its topic freed here; its payload stays the caller's) to current.replace: `replace` when it was taken, else `keep`.
static verdict_t replace_with(mqtt_broker_plugin_current_outgoing_message_t *m) {
    fast_transformer_string_t err;
    bool ok = mqtt_broker_plugin_current_replace(m, &err);
    out_free(m);
    if (!ok) {
        fast_transformer_string_free(&err);
        return KEEP;
    }
    return REPLACE;
}

// Replaces the message with `topic` carrying `err` (freed here) as its payload.
static verdict_t replace_with_error(const char *topic, fast_transformer_string_t *err) {
    mqtt_broker_plugin_current_outgoing_message_t m =
        out_message(topic, NULL, 0, err->ptr, err->len, mqtt_broker_plugin_current_message_qos(), false);
    verdict_t v = replace_with(&m); // before freeing `err`: the payload points into it
    fast_transformer_string_free(err);
    return v;
}

static verdict_t rule_replace(size_t rest, const fast_transformer_string_t *topic) {
    fast_transformer_list_u8_t payload;
    mqtt_broker_plugin_current_payload(&payload);
    fast_transformer_string_t client_id;
    mqtt_broker_plugin_current_client_id(&client_id);
    size_t len = payload.len + 1 + client_id.len;
    uint8_t *body = malloc(len);
    if (payload.len > 0) {
        memcpy(body, payload.ptr, payload.len);
    }
    body[payload.len] = ' ';
    memcpy(body + payload.len + 1, client_id.ptr, client_id.len);
    fast_transformer_list_u8_free(&payload);
    fast_transformer_string_free(&client_id);
    mqtt_broker_plugin_current_outgoing_message_t m =
        out_message("replaced/", topic->ptr + rest, topic->len - rest, body, len,
                    mqtt_broker_plugin_current_message_qos(), mqtt_broker_plugin_current_retain());
    verdict_t v = replace_with(&m); // before freeing `body`: the payload points into it
    free(body);
    return v;
}

static verdict_t rule_add(size_t rest, const fast_transformer_string_t *topic) {
    char digits[20];
    size_t n = decimal(topic->len, digits);
    mqtt_broker_plugin_current_outgoing_message_t m =
        out_message("added/", topic->ptr + rest, topic->len - rest, (uint8_t *)digits, n,
                    mqtt_broker_plugin_current_message_qos(), false);
    add_and_free(&m);
    return KEEP;
}

static verdict_t rule_props(size_t rest, const fast_transformer_string_t *topic) {
    mqtt_broker_plugin_current_message_properties_t props;
    mqtt_broker_plugin_current_properties(&props);
    size_t len = 0;
    for (size_t i = 0; i < props.user_properties.len; i++) {
        len += props.user_properties.ptr[i].f0.len + 1 + props.user_properties.ptr[i].f1.len + 1;
    }
    uint8_t *body = malloc(len + 1);
    size_t at = 0;
    for (size_t i = 0; i < props.user_properties.len; i++) {
        fast_transformer_tuple2_string_string_t *kv = &props.user_properties.ptr[i];
        if (i > 0) {
            body[at++] = ';';
        }
        memcpy(body + at, kv->f0.ptr, kv->f0.len);
        at += kv->f0.len;
        body[at++] = '=';
        memcpy(body + at, kv->f1.ptr, kv->f1.len);
        at += kv->f1.len;
    }
    mqtt_broker_plugin_current_message_properties_free(&props);
    mqtt_broker_plugin_current_outgoing_message_t m =
        out_message("props/", topic->ptr + rest, topic->len - rest, body, at,
                    mqtt_broker_plugin_current_message_qos(), false);
    add_and_free(&m);
    free(body);
    return KEEP;
}

static verdict_t rule_read(size_t rest, const fast_transformer_string_t *topic) {
    mqtt_broker_plugin_current_incoming_message_t in;
    mqtt_broker_plugin_current_read_message(&in);
    size_t len = in.topic.len + 1 + in.payload.len + 5 + 20;
    uint8_t *body = malloc(len);
    size_t at = 0;
    memcpy(body, in.topic.ptr, in.topic.len);
    at += in.topic.len;
    body[at++] = '|';
    if (in.payload.len > 0) {
        memcpy(body + at, in.payload.ptr, in.payload.len);
    }
    at += in.payload.len;
    body[at++] = '|';
    body[at++] = (uint8_t)('0' + in.qos);
    body[at++] = '|';
    body[at++] = in.retain ? '1' : '0';
    body[at++] = '|';
    at += decimal(in.received_millis, (char *)body + at);
    mqtt_broker_plugin_current_incoming_message_free(&in);
    mqtt_broker_plugin_current_outgoing_message_t m =
        out_message("read/", topic->ptr + rest, topic->len - rest, body, at, MQTT_BROKER_PLUGIN_TYPES_QOS_AT_MOST_ONCE,
                    false);
    add_and_free(&m);
    free(body);
    return KEEP;
}

// Hands `m` to current.add and frees its topic; true if it was taken. If it was refused,
// replaces the message with `error_topic` carrying the error and sets `*verdict` to what
// replace_with_error answered.
static bool add_or_report(mqtt_broker_plugin_current_outgoing_message_t *m, const char *error_topic,
                          verdict_t *verdict) {
    fast_transformer_string_t err;
    bool ok = mqtt_broker_plugin_current_add(m, &err);
    out_free(m);
    if (!ok) {
        *verdict = replace_with_error(error_topic, &err);
    }
    return ok;
}

static verdict_t rule_toomany(void) {
    for (int i = 0; i < 65; i++) {
        char digits[20];
        size_t n = decimal((size_t)i, digits);
        mqtt_broker_plugin_current_outgoing_message_t m =
            out_message("toomany/added", NULL, 0, (uint8_t *)digits, n,
                        mqtt_broker_plugin_current_message_qos(), false);
        verdict_t v;
        if (!add_or_report(&m, "toomany/error", &v)) {
            return v;
        }
    }
    return KEEP;
}

static verdict_t rule_badtopic(void) {
    mqtt_broker_plugin_current_outgoing_message_t m =
        out_message("bad/+/topic", NULL, 0, NULL, 0, mqtt_broker_plugin_current_message_qos(), false);
    verdict_t v = KEEP;
    add_or_report(&m, "badtopic/error", &v);
    return v;
}

verdict_t exports_mqtt_broker_plugin_fast_transform_transform(void) {
    fast_transformer_string_t topic;
    mqtt_broker_plugin_current_topic(&topic);
    size_t rest = 0;
    verdict_t v = KEEP;
    if (starts_with(&topic, "fast/drop/", &rest)) {
        v = DROP;
    } else if (starts_with(&topic, "fast/replace/", &rest)) {
        v = rule_replace(rest, &topic);
    } else if (starts_with(&topic, "fast/add/", &rest)) {
        v = rule_add(rest, &topic);
    } else if (starts_with(&topic, "fast/props/", &rest)) {
        v = rule_props(rest, &topic);
    } else if (starts_with(&topic, "fast/read/", &rest)) {
        v = rule_read(rest, &topic);
    } else if (starts_with(&topic, "fast/noreplace/", &rest)) {
        v = REPLACE;
    } else if (starts_with(&topic, "fast/toomany/", &rest)) {
        v = rule_toomany();
    } else if (starts_with(&topic, "fast/badtopic/", &rest)) {
        v = rule_badtopic();
    }
    fast_transformer_string_free(&topic);
    return v;
}
