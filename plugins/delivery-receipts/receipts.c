// delivery-receipts: publishes a receipt when a subscriber acknowledges a QoS 1 or 2
// message (PUBACK / PUBCOMP), so that the sender of a command can learn that a device has it
// without the device's firmware sending a reply.
//
// Plugin API 0.2, world `delivery-observer` (event hooks `delivery-events`; capability
// `publish`). For each acknowledgement of a message on a topic outside `<prefix>/`, it
// publishes to `<prefix>/<client-id>` (QoS 1, not retained):
//   {"client_id":"dev-1","topic":"cmd/dev-1/reboot","qos":1,"at":1796600000000}
// Config: `prefix` (default `receipts`); `only`, a topic prefix (default: every topic),
// narrows which acknowledgements make receipts.
// Grant needed: `capabilities: {publish: {topics: ["receipts/#"]}}`; without it each
// publish fails: the first failure is logged and the plugin carries on.
//
// Build: bash build.sh. The strings an exported function receives belong to it: freed here.
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gen/delivery_observer.h"

typedef delivery_observer_string_t str_t;

static char prefix[256] = "receipts";
static size_t prefix_len = 8;
static char only[256] = "";
static size_t only_len = 0;
static bool warned = false;

static void log_at(mqtt_broker_plugin_host_log_level_t level, const char *msg) {
    str_t s;
    delivery_observer_string_dup(&s, msg);
    mqtt_broker_plugin_host_log(level, &s);
    delivery_observer_string_free(&s);
}

static bool copy_value(const str_t *v, char *out, size_t cap, size_t *len) {
    if (v->len >= cap) return false;
    memcpy(out, v->ptr, v->len);
    out[v->len] = 0;
    *len = v->len;
    return true;
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config, str_t *err) {
    bool ok = true;
    const char *why = NULL;
    for (size_t i = 0; i < config->len && ok; i++) {
        str_t *k = &config->ptr[i].f0, *v = &config->ptr[i].f1;
        if (k->len == 6 && memcmp(k->ptr, "prefix", 6) == 0) {
            ok = copy_value(v, prefix, sizeof prefix, &prefix_len) && prefix_len > 0 &&
                 !memchr(prefix, '+', prefix_len) && !memchr(prefix, '#', prefix_len) &&
                 prefix[prefix_len - 1] != '/';
            if (!ok) why = "`prefix` must be a topic name of 1 to 255 bytes, without + or # and not ending in /";
        } else if (k->len == 4 && memcmp(k->ptr, "only", 4) == 0) {
            ok = copy_value(v, only, sizeof only, &only_len);
            if (!ok) why = "`only` must be at most 255 bytes";
        } else {
            ok = false;
            why = "unknown config key (known: prefix, only)";
        }
    }
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    if (!ok) delivery_observer_string_dup(err, why);
    return ok;
}

void exports_mqtt_broker_plugin_delivery_events_delivered(str_t *client_id, str_t *topic,
                                                           exports_mqtt_broker_plugin_delivery_events_qos_t qos) {
    (void)qos;
    delivery_observer_string_free(client_id);
    delivery_observer_string_free(topic);
}

// Appends the C string `s` to `out` (at most cap-1 bytes in all); returns the new length.
// (No snprintf: it would pull WASI's stdio into the component.)
static size_t put(char *out, size_t at, size_t cap, const char *s) {
    while (*s && at + 1 < cap) out[at++] = *s++;
    out[at] = 0;
    return at;
}

static size_t put_u64(char *out, size_t at, size_t cap, unsigned long long v) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && at + 1 < cap) out[at++] = digits[--n];
    out[at] = 0;
    return at;
}

// Appends `s` JSON-escaped to `out` (at most cap-1 bytes in all); returns the new length.
static size_t json_escape(char *out, size_t at, size_t cap, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n && at + 7 < cap; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            out[at++] = '\\';
            out[at++] = (char)c;
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            at = put(out, at, cap, "\\u00");
            out[at++] = hex[c >> 4];
            out[at++] = hex[c & 15];
        } else {
            out[at++] = (char)c;
        }
    }
    out[at] = 0;
    return at;
}

void exports_mqtt_broker_plugin_delivery_events_acknowledged(str_t *client_id, str_t *topic,
                                                              exports_mqtt_broker_plugin_delivery_events_qos_t qos) {
    bool own = topic->len > prefix_len && memcmp(topic->ptr, prefix, prefix_len) == 0 &&
               topic->ptr[prefix_len] == '/';
    bool wanted = only_len == 0 || (topic->len >= only_len && memcmp(topic->ptr, only, only_len) == 0);
    // A receipt is never made for a receipt (that would never end).
    if (!own && wanted) {
        static char target[1024], body[4096];
        size_t t = put(target, 0, sizeof target, prefix);
        t = put(target, t, sizeof target, "/");
        for (size_t i = 0; i < client_id->len && t + 1 < sizeof target; i++) {
            uint8_t c = client_id->ptr[i];
            // One topic level per client: wildcards and separators in an id become `_`.
            target[t++] = (c == '+' || c == '#' || c == '/') ? '_' : (char)c;
        }
        target[t] = 0;
        size_t b = put(body, 0, sizeof body, "{\"client_id\":\"");
        b = json_escape(body, b, sizeof body - 64, client_id->ptr, client_id->len);
        b = put(body, b, sizeof body, "\",\"topic\":\"");
        b = json_escape(body, b, sizeof body - 64, topic->ptr, topic->len);
        b = put(body, b, sizeof body, "\",\"qos\":");
        b = put_u64(body, b, sizeof body, (unsigned long long)qos);
        b = put(body, b, sizeof body, ",\"at\":");
        b = put_u64(body, b, sizeof body, (unsigned long long)mqtt_broker_plugin_host_now_millis());
        b = put(body, b, sizeof body, "}");
        mqtt_broker_plugin_publish_outgoing_message_t m = {0};
        m.topic.ptr = (uint8_t *)target;
        m.topic.len = t;
        m.payload.ptr = (uint8_t *)body;
        m.payload.len = b;
        m.qos = MQTT_BROKER_PLUGIN_TYPES_QOS_AT_LEAST_ONCE;
        m.retain = false;
        m.properties.is_some = false;
        str_t err = {0};
        if (!mqtt_broker_plugin_publish_publish(&m, &err)) {
            if (!warned) {
                warned = true;
                char line[600];
                size_t l = put(line, 0, sizeof line, "cannot publish receipts (logged once): ");
                size_t n = err.len > 500 ? 500 : err.len;
                memcpy(line + l, err.ptr, n);
                line[l + n] = 0;
                log_at(MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_WARN, line);
            }
            delivery_observer_string_free(&err);
        }
    }
    delivery_observer_string_free(client_id);
    delivery_observer_string_free(topic);
}
