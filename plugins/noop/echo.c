// A test plugin (plugin API 0.2, world `observer`) that republishes every event it gets, so
// that tests can watch event hooks with an ordinary subscriber: `echo/<event>` with the
// event's fields separated by spaces, e.g. `echo/subscribed` -> `dev-1 sensors/# 1`.
// Events about its own `echo/` topics are not echoed (that would never end). Needs
// `capabilities: {publish: {topics: ["echo/#"]}}` (and `tick` for `echo/tick`).
// Built by build.sh beside the do-nothing plugins; used by tests/plugins_v02.rs.
#include <string.h>

#include "gen/echo/observer.h"

typedef observer_string_t str_t;

static char buf[2048];
static size_t len;

static void put(const char *s, size_t n) {
    if (len + n + 1 > sizeof buf) n = sizeof buf - 1 - len;
    memcpy(buf + len, s, n);
    len += n;
}
static void put_str(const str_t *s) { put((const char *)s->ptr, s->len); }
static void put_c(const char *s) { put(s, strlen(s)); }
static void put_u64(unsigned long long v) {
    char d[24];
    int n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) put(&d[--n], 1);
}
static void sep(void) { put(" ", 1); }

static bool ours(const str_t *topic) { return topic->len >= 5 && memcmp(topic->ptr, "echo/", 5) == 0; }

// Publishes `echo/<event>` with what was put into buf, then resets it.
static void emit(const char *event) {
    char topic[64] = "echo/";
    strncat(topic, event, sizeof topic - 6);
    mqtt_broker_plugin_publish_outgoing_message_t m = {0};
    m.topic.ptr = (uint8_t *)topic;
    m.topic.len = strlen(topic);
    m.payload.ptr = (uint8_t *)buf;
    m.payload.len = len;
    m.qos = MQTT_BROKER_PLUGIN_TYPES_QOS_AT_MOST_ONCE;
    str_t err = {0};
    if (!mqtt_broker_plugin_publish_publish(&m, &err)) observer_string_free(&err);
    len = 0;
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config, str_t *err) {
    (void)err;
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    return true;
}

void exports_mqtt_broker_plugin_connection_events_connected(
    exports_mqtt_broker_plugin_connection_events_client_summary_t *c, bool session_present) {
    put_str(&c->client_id);
    sep();
    put_c(session_present ? "1" : "0");
    sep();
    put_u64(c->protocol_level);
    emit("connected");
    exports_mqtt_broker_plugin_connection_events_client_summary_free(c);
}

void exports_mqtt_broker_plugin_connection_events_disconnected(str_t *client_id, str_t *reason) {
    put_str(client_id);
    sep();
    put_str(reason);
    emit("disconnected");
    observer_string_free(client_id);
    observer_string_free(reason);
}

void exports_mqtt_broker_plugin_connection_events_session_expired(str_t *client_id) {
    put_str(client_id);
    emit("session-expired");
    observer_string_free(client_id);
}

void exports_mqtt_broker_plugin_subscription_events_subscribed(
    str_t *client_id, str_t *filter, exports_mqtt_broker_plugin_subscription_events_qos_t qos) {
    put_str(client_id);
    sep();
    put_str(filter);
    sep();
    put_u64(qos);
    emit("subscribed");
    observer_string_free(client_id);
    observer_string_free(filter);
}

void exports_mqtt_broker_plugin_subscription_events_unsubscribed(str_t *client_id, str_t *filter) {
    put_str(client_id);
    sep();
    put_str(filter);
    emit("unsubscribed");
    observer_string_free(client_id);
    observer_string_free(filter);
}

void exports_mqtt_broker_plugin_message_events_published(
    str_t *client_id, str_t *topic, exports_mqtt_broker_plugin_message_events_qos_t qos, bool retain,
    uint32_t payload_size, uint32_t subscribers) {
    if (!ours(topic)) {
        put_str(client_id);
        sep();
        put_str(topic);
        sep();
        put_u64(qos);
        sep();
        put_c(retain ? "1" : "0");
        sep();
        put_u64(payload_size);
        sep();
        put_u64(subscribers);
        emit("published");
    }
    observer_string_free(client_id);
    observer_string_free(topic);
}

void exports_mqtt_broker_plugin_message_events_dropped(str_t *client_id, str_t *topic, str_t *reason) {
    if (!ours(topic)) {
        put_str(client_id);
        sep();
        put_str(topic);
        sep();
        put_str(reason);
        emit("dropped");
    }
    observer_string_free(client_id);
    observer_string_free(topic);
    observer_string_free(reason);
}

void exports_mqtt_broker_plugin_broker_events_config_reloaded(uint64_t generation, bool ok, str_t *maybe_error) {
    put_u64(generation);
    sep();
    put_c(ok ? "1" : "0");
    if (maybe_error) {
        sep();
        put_str(maybe_error);
        observer_string_free(maybe_error);
    }
    emit("config-reloaded");
}

void exports_mqtt_broker_plugin_timer_tick(uint64_t now_millis) {
    put_u64(now_millis);
    emit("tick");
}
