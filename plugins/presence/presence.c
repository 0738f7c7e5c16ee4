/*
 * presence: an mqtt-broker connection-observer plugin (WIT mqtt-broker:plugin@0.2.0) in C.
 *
 * On every accepted connection it publishes, as the broker, a retained QoS 1 message to
 * `{prefix}/{client id}` saying the client is online (user name, peer address, protocol,
 * since when); when the connection ends it replaces it with an offline message carrying the
 * reason; when a persistent session expires it can clear the retained message. Client ids
 * starting with an `exclude` prefix are not reported.
 *
 * Publishing needs the grant `capabilities: {publish: {topics: ["{prefix}/#"]}}`. Without it
 * (or with a grant that does not cover the prefix) every publish returns an error: the first
 * one is logged as a warning (naming the missing grant), later ones are not, and the plugin
 * carries on.
 *
 * The JSON, topic and config logic is in presence_logic.c (tested natively by
 * test_presence.c); this file adapts it to the generated bindings.
 */
#include "gen/connection_observer.h"
#include "presence_logic.h"

#include <stdlib.h>
#include <string.h>

/* Configuration, set by init (one copy per instance). */
static char *prefix;          /* without trailing slashes */
static size_t prefix_len;
static bool clear_on_expiry;  /* clear the retained message when a session expires */
static presence_prefixes_t excluded;

/* Whether a failed publish has been logged already (it is logged once per instance). */
static bool publish_error_logged;

static pstr_t view(const connection_observer_string_t *s) {
    return (pstr_t){(const char *)s->ptr, s->len};
}

static bool key_is(const connection_observer_string_t *s, const char *key) {
    return s->len == strlen(key) && memcmp(s->ptr, key, s->len) == 0;
}

static void log_line(mqtt_broker_plugin_host_log_level_t level, const char *bytes, size_t len) {
    connection_observer_string_t msg = {(uint8_t *)bytes, len};
    mqtt_broker_plugin_host_log(level, &msg);
}

static void log_text(mqtt_broker_plugin_host_log_level_t level, const char *text) {
    log_line(level, text, strlen(text));
}

/* Sets *err to "{what}: {why}" for a refused init. */
static void init_error(connection_observer_string_t *err, const char *what, const char *why) {
    pbuf_t b;
    pbuf_init(&b);
    pbuf_puts(&b, what);
    pbuf_puts(&b, ": ");
    pbuf_puts(&b, why);
    if (b.failed) {
        connection_observer_string_dup(err, "presence: out of memory in init");
    } else {
        connection_observer_string_dup_n(err, b.ptr, b.len);
    }
    pbuf_free(&b);
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               connection_observer_string_t *err) {
    bool ok = true;
    pstr_t want_prefix = pstr("presence");
    bool want_clear = false;
    presence_prefixes_t want_excluded = {NULL, NULL, 0};
    for (size_t i = 0; ok && i < config->len; i++) {
        connection_observer_tuple2_string_string_t *kv = &config->ptr[i];
        const char *why = NULL;
        if (key_is(&kv->f0, "prefix")) {
            why = presence_check_prefix(view(&kv->f1), &want_prefix);
            if (why) init_error(err, "prefix", why);
        } else if (key_is(&kv->f0, "clear_on_expiry")) {
            why = presence_parse_bool(view(&kv->f1), &want_clear);
            if (why) init_error(err, "clear_on_expiry", why);
        } else if (key_is(&kv->f0, "exclude")) {
            why = presence_parse_prefixes(view(&kv->f1), &want_excluded);
            if (why) init_error(err, "exclude", why);
        } else {
            /* A typo in the config should refuse loading, not silently change behaviour. */
            why = "unknown key";
            connection_observer_string_dup(err, "unknown config key (known: prefix, exclude, clear_on_expiry)");
        }
        ok = why == NULL;
    }
    if (ok) {
        char *copy = malloc(want_prefix.len + 1);
        if (copy == NULL) {
            connection_observer_string_dup(err, "presence: out of memory in init");
            ok = false;
        } else {
            memcpy(copy, want_prefix.ptr, want_prefix.len);
            copy[want_prefix.len] = '\0';
            free(prefix);
            prefix = copy;
            prefix_len = want_prefix.len;
            clear_on_expiry = want_clear;
            presence_prefixes_free(&excluded);
            excluded = want_excluded;
            want_excluded = (presence_prefixes_t){NULL, NULL, 0};
        }
    }
    presence_prefixes_free(&want_excluded);
    if (ok) {
        pbuf_t line;
        pbuf_init(&line);
        pbuf_puts(&line, "presence ready: topics ");
        pbuf_put(&line, prefix, prefix_len);
        pbuf_puts(&line, "/{client id}, ");
        pbuf_put_u64(&line, excluded.count);
        pbuf_puts(&line, " excluded prefix(es), clear_on_expiry ");
        pbuf_puts(&line, clear_on_expiry ? "true" : "false");
        if (!line.failed) log_line(MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_INFO, line.ptr, line.len);
        pbuf_free(&line);
    }
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    return ok;
}

/* Publishes a retained QoS 1 message to `topic`; logs the first failure. */
static void publish_retained(const pbuf_t *topic, const char *payload, size_t payload_len) {
    mqtt_broker_plugin_publish_outgoing_message_t msg = {
        .topic = {(uint8_t *)topic->ptr, topic->len},
        .payload = {(uint8_t *)payload, payload_len},
        .qos = MQTT_BROKER_PLUGIN_TYPES_QOS_AT_LEAST_ONCE,
        .retain = true,
        .properties = {.is_some = false},
    };
    connection_observer_string_t err = {NULL, 0};
    /* Arguments of an import stay owned by the caller. */
    if (mqtt_broker_plugin_publish_publish(&msg, &err)) return;
    if (!publish_error_logged) {
        publish_error_logged = true;
        pbuf_t line;
        pbuf_init(&line);
        pbuf_puts(&line, "presence: cannot publish to ");
        pbuf_put(&line, topic->ptr, topic->len);
        pbuf_puts(&line, ": ");
        pbuf_put(&line, (const char *)err.ptr, err.len);
        pbuf_puts(&line, " (grant capabilities: {publish: {topics: [\"");
        pbuf_put(&line, prefix, prefix_len);
        pbuf_puts(&line, "/#\"]}}); further publish errors are not logged");
        if (!line.failed) log_line(MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_WARN, line.ptr, line.len);
        pbuf_free(&line);
    }
    connection_observer_string_free(&err);
}

/* The topic for `id`, or false (with a debug line) when the id cannot be part of a topic. */
static bool topic_for(pbuf_t *topic, pstr_t id) {
    if (presence_topic(topic, (pstr_t){prefix, prefix_len}, id)) return !topic->failed;
    log_text(MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_DEBUG,
             "presence: client id is empty or contains + # or NUL; not reported");
    return false;
}

void exports_mqtt_broker_plugin_connection_events_connected(
    exports_mqtt_broker_plugin_connection_events_client_summary_t *client, bool session_present) {
    (void)session_present;
    pstr_t id = view(&client->client_id);
    pbuf_t topic, payload;
    pbuf_init(&topic);
    pbuf_init(&payload);
    if (!presence_excluded(&excluded, id) && topic_for(&topic, id)) {
        presence_client_t c = {
            .client_id = id,
            .has_username = client->username.is_some,
            .username = client->username.is_some ? view(&client->username.val) : (pstr_t){NULL, 0},
            .peer = view(&client->peer_address),
            .protocol = PRESENCE_MQTT311,
        };
        switch (client->protocol_level) {
        case MQTT_BROKER_PLUGIN_TYPES_PROTOCOL_LEVEL_MQTT31: c.protocol = PRESENCE_MQTT31; break;
        case MQTT_BROKER_PLUGIN_TYPES_PROTOCOL_LEVEL_MQTT311: c.protocol = PRESENCE_MQTT311; break;
        case MQTT_BROKER_PLUGIN_TYPES_PROTOCOL_LEVEL_MQTT5: c.protocol = PRESENCE_MQTT5; break;
        }
        presence_online_payload(&payload, &c, mqtt_broker_plugin_host_now_millis());
        if (!payload.failed) publish_retained(&topic, payload.ptr, payload.len);
    }
    pbuf_free(&topic);
    pbuf_free(&payload);
    /* Arguments of an export are owned by the callee. */
    exports_mqtt_broker_plugin_connection_events_client_summary_free(client);
}

void exports_mqtt_broker_plugin_connection_events_disconnected(connection_observer_string_t *client_id,
                                                               connection_observer_string_t *reason) {
    pstr_t id = view(client_id);
    pbuf_t topic, payload;
    pbuf_init(&topic);
    pbuf_init(&payload);
    if (!presence_excluded(&excluded, id) && presence_reports_disconnect(view(reason)) && topic_for(&topic, id)) {
        presence_offline_payload(&payload, id, view(reason), mqtt_broker_plugin_host_now_millis());
        if (!payload.failed) publish_retained(&topic, payload.ptr, payload.len);
    }
    pbuf_free(&topic);
    pbuf_free(&payload);
    connection_observer_string_free(client_id);
    connection_observer_string_free(reason);
}

void exports_mqtt_broker_plugin_connection_events_session_expired(connection_observer_string_t *client_id) {
    pstr_t id = view(client_id);
    pbuf_t topic;
    pbuf_init(&topic);
    if (clear_on_expiry && !presence_excluded(&excluded, id) && topic_for(&topic, id)) {
        /* An empty retained payload removes the retained message. */
        publish_retained(&topic, "", 0);
    }
    pbuf_free(&topic);
    connection_observer_string_free(client_id);
}
