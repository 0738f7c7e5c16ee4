/*
 * audit: an mqtt-broker observer plugin (world `observer` of WIT mqtt-broker:plugin@0.2.0)
 * in C that keeps usage counters and publishes a summary of them.
 *
 * Per client id (messages published and their payload bytes, subscriptions granted, messages
 * dropped instead of delivered to it, connects) and broker-wide (connects, disconnects by
 * reason, config reloads in force / refused, session expiries, and the sums of the
 * per-client counters). On every tick (capability `tick`) it publishes, as the broker, a
 * retained QoS 0 JSON summary of the totals to `topic` (capability `publish`).
 *
 * Where the counters live (capability `kv`): per-client records under `c/<client id>`
 * (a fixed 41-byte binary record, see audit_core.h) and the totals under `totals` (JSON, the
 * summary without `at`). Every event reads the record it changes from the store, changes it
 * and writes it back (read-modify-write), totals included, so that whichever instance of
 * the plugin handles the next event or tick sees every count so far: an instance replaced
 * after a failure, the instance of a reloaded config, and (with persistence on) the plugin
 * after a broker restart. The broker calls the event hooks and the tick of one loaded
 * plugin on one thread, in order, so these read-modify-writes do not interleave; the copy
 * of the totals in this instance's memory is the fallback. (A reload hands the event route
 * to the new generation at once, one thread still; a second `config-reloaded` for the
 * generation counted last is ignored anyway, see reload_counted and README.md.)
 *
 * Without the `kv` grant the first store call fails: the plugin logs that once (a warning
 * naming the capability) and counts in this instance's memory only (totals, and the client
 * ids in a table of at most AUDIT_MEMORY_CLIENTS for the `clients` count); those counts
 * restart from zero when the instance is replaced (config reload, broker restart, a failed
 * call). Without `publish` the summary is refused: logged once, counting goes on. Without
 * `tick` the broker never calls `tick`: nothing is published, counting goes on.
 *
 * The counting, JSON, records and config logic is in audit_core.c (tested natively by
 * test_audit.c); this file adapts it to the generated bindings.
 */
#include "gen/observer.h"
#include "audit_core.h"

#include <stdlib.h>
#include <string.h>

#define LOG_INFO MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_INFO
#define LOG_WARN MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_WARN

/* Configuration, set by init (one copy per instance). */
static char *topic;
static size_t topic_len;
static audit_prefixes_t excluded;

/* Whether the key-value store is usable (decided by init). */
static bool use_kv;
/* The totals: a copy of the stored ones (kv), or the only ones (no kv). */
static audit_totals_t totals;
/* Clients counted without the key-value store. */
static audit_table_t memory_clients;

/* Each kind of trouble is logged once per instance. */
static bool kv_error_logged, corrupt_logged, publish_error_logged, table_full_logged;

static astr_t view(const observer_string_t *s) {
    return (astr_t){(const char *)s->ptr, s->len};
}

static bool key_is(const observer_string_t *s, const char *key) {
    return s->len == strlen(key) && memcmp(s->ptr, key, s->len) == 0;
}

static void log_buf(mqtt_broker_plugin_host_log_level_t level, const abuf_t *b) {
    if (b->failed) return;
    observer_string_t msg = {(uint8_t *)b->ptr, b->len};
    mqtt_broker_plugin_host_log(level, &msg);
}

/* Logs the warning "audit: " + the `n` parts once, tracked by *logged. */
static void log_once(bool *logged, const astr_t *parts, size_t n) {
    if (*logged) return;
    *logged = true;
    abuf_t line;
    abuf_init(&line);
    abuf_puts(&line, "audit: ");
    for (size_t k = 0; k < n; k++) abuf_put(&line, parts[k].ptr, parts[k].len);
    log_buf(LOG_WARN, &line);
    abuf_free(&line);
}
#define LOG_ONCE(flag, ...) \
    log_once((flag), (const astr_t[]){__VA_ARGS__}, sizeof((const astr_t[]){__VA_ARGS__}) / sizeof(astr_t))

/* ---------------------------------------------------------------------------------------
 * The key-value store
 * ------------------------------------------------------------------------------------- */

/* Reads `key` into `out` (*found says whether it is there); false on a store error, which
 * is logged once. */
static bool kv_read(const abuf_t *key, abuf_t *out, bool *found) {
    observer_string_t k = {(uint8_t *)key->ptr, key->len};
    observer_option_list_u8_t value = {.is_some = false};
    observer_string_t err = {NULL, 0};
    *found = false;
    out->len = 0;
    /* Arguments of an import stay owned by the caller; results are ours to free. */
    if (!mqtt_broker_plugin_kv_get(&k, &value, &err)) {
        LOG_ONCE(&kv_error_logged, astr("cannot read "), (astr_t){key->ptr, key->len}, astr(": "), view(&err),
                 astr("; further key-value errors are not logged"));
        observer_string_free(&err);
        return false;
    }
    if (value.is_some) {
        *found = true;
        abuf_put(out, (const char *)value.val.ptr, value.val.len);
    }
    observer_option_list_u8_free(&value);
    return !out->failed;
}

/* Writes `bytes` under `key`; false on a store error, which is logged once. */
static bool kv_write(const abuf_t *key, const char *bytes, size_t len) {
    observer_string_t k = {(uint8_t *)key->ptr, key->len};
    observer_list_u8_t v = {(uint8_t *)bytes, len};
    observer_string_t err = {NULL, 0};
    if (mqtt_broker_plugin_kv_set(&k, &v, &err)) return true;
    LOG_ONCE(&kv_error_logged, astr("cannot store "), (astr_t){key->ptr, key->len}, astr(": "), view(&err),
             astr("; further key-value errors are not logged"));
    observer_string_free(&err);
    return false;
}

static abuf_t totals_key(void) {
    abuf_t k;
    abuf_init(&k);
    abuf_puts(&k, "totals");
    return k;
}

/* Whether the memory copy holds counts the store refused (it is then the newer one). */
static bool totals_unsaved;

/* Refreshes the memory copy from the stored totals (kept when there are none, on error, and
 * while it holds counts the store refused). */
static void load_totals(void) {
    if (!use_kv || totals_unsaved) return;
    abuf_t key = totals_key(), value;
    abuf_init(&value);
    bool found;
    if (kv_read(&key, &value, &found) && found) {
        const char *why = audit_totals_parse((astr_t){value.ptr, value.len}, &totals);
        if (why != NULL) {
            LOG_ONCE(&corrupt_logged, astr("the stored totals are unreadable ("), astr(why),
                     astr("); they are overwritten from this instance's counts"));
        }
    }
    abuf_free(&key);
    abuf_free(&value);
}

static void store_totals(void) {
    if (!use_kv) return;
    abuf_t key = totals_key(), value;
    abuf_init(&value);
    audit_totals_json(&value, &totals);
    totals_unsaved = value.failed || !kv_write(&key, value.ptr, value.len);
    abuf_free(&key);
    abuf_free(&value);
}

/* Counts `ev` for the totals and, when `client_id` is given, for that client. */
static void count(const observer_string_t *client_id, audit_event_t ev, uint64_t bytes) {
    load_totals();
    audit_client_t record = {0};
    audit_client_t *c = NULL;
    bool created = false;
    if (client_id == NULL) {
        /* Broker-wide only. */
    } else if (use_kv) {
        abuf_t key, value;
        abuf_init(&key);
        abuf_init(&value);
        audit_client_key(&key, view(client_id));
        bool found = false;
        if (!key.failed && kv_read(&key, &value, &found)) {
            if (!found) {
                created = true;
            } else if (!audit_client_decode((const uint8_t *)value.ptr, value.len, &record)) {
                LOG_ONCE(&corrupt_logged, astr("unreadable record "), (astr_t){key.ptr, key.len},
                         astr("; it restarts from zero"));
            }
            c = &record;
            audit_count(&totals, c, ev, bytes);
            uint8_t bin[AUDIT_RECORD_LEN];
            audit_client_encode(c, bin);
            if (kv_write(&key, (const char *)bin, sizeof bin) && created) totals.clients++;
        } else {
            audit_count(&totals, NULL, ev, bytes);
        }
        abuf_free(&key);
        abuf_free(&value);
        store_totals();
        return;
    } else {
        c = audit_table_get(&memory_clients, view(client_id), &created);
        if (c == NULL) {
            LOG_ONCE(&table_full_logged, astr("too many clients to count each in memory (grant capabilities: "
                                              "{kv: {}}); further clients are counted in the totals only"));
        } else if (created) {
            totals.clients++;
        }
    }
    audit_count(&totals, c, ev, bytes);
    store_totals();
}

static bool skip(const observer_string_t *client_id) {
    return audit_excluded(&excluded, view(client_id));
}

/* ---------------------------------------------------------------------------------------
 * Exports
 * ------------------------------------------------------------------------------------- */

/* Sets *err to "audit: {key}: {why}" for a refused init. */
static void init_error(observer_string_t *err, const char *key, const char *why) {
    abuf_t b;
    abuf_init(&b);
    abuf_puts(&b, "audit: ");
    abuf_puts(&b, key);
    abuf_puts(&b, ": ");
    abuf_puts(&b, why);
    if (b.failed) {
        observer_string_dup(err, "audit: out of memory in init");
    } else {
        observer_string_dup_n(err, b.ptr, b.len);
    }
    abuf_free(&b);
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               observer_string_t *err) {
    bool ok = true;
    astr_t want_topic = astr("audit/summary");
    audit_prefixes_t want_excluded = {NULL, NULL, 0};
    for (size_t i = 0; ok && i < config->len; i++) {
        observer_tuple2_string_string_t *kv = &config->ptr[i];
        const char *why = NULL;
        const char *key = "";
        if (key_is(&kv->f0, "topic")) {
            key = "topic";
            want_topic = view(&kv->f1);
            why = audit_check_topic(want_topic);
        } else if (key_is(&kv->f0, "exclude")) {
            key = "exclude";
            why = audit_parse_prefixes(view(&kv->f1), &want_excluded);
        } else {
            /* A typo in the config should refuse loading, not silently change behaviour. */
            key = "config";
            why = "unknown key (known: topic, exclude)";
        }
        if (why != NULL) {
            init_error(err, key, why);
            ok = false;
        }
    }
    if (ok) {
        char *copy = malloc(want_topic.len + 1);
        if (copy == NULL) {
            observer_string_dup(err, "audit: out of memory in init");
            ok = false;
        } else {
            memcpy(copy, want_topic.ptr, want_topic.len);
            copy[want_topic.len] = '\0';
            free(topic);
            topic = copy;
            topic_len = want_topic.len;
            audit_prefixes_free(&excluded);
            excluded = want_excluded;
            want_excluded = (audit_prefixes_t){NULL, NULL, 0};
        }
    }
    audit_prefixes_free(&want_excluded);
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    if (!ok) return false;

    /* Whether the store is granted: the first read says (an error names the grant). */
    audit_totals_reset(&totals);
    audit_table_free(&memory_clients);
    audit_table_init(&memory_clients, AUDIT_MEMORY_CLIENTS);
    abuf_t key = totals_key();
    observer_string_t k = {(uint8_t *)key.ptr, key.len};
    observer_option_list_u8_t stored = {.is_some = false};
    observer_string_t kv_err = {NULL, 0};
    use_kv = mqtt_broker_plugin_kv_get(&k, &stored, &kv_err);
    if (!use_kv) {
        LOG_ONCE(&kv_error_logged, astr("the key-value store is not usable ("), view(&kv_err),
                 astr("): counting in this instance's memory only; the counts restart from zero when the "
                      "plugin is reloaded or the broker restarts (grant capabilities: {kv: {}} to keep them)"));
        observer_string_free(&kv_err);
    } else {
        observer_option_list_u8_free(&stored);
        load_totals();
    }
    abuf_free(&key);

    abuf_t line;
    abuf_init(&line);
    abuf_puts(&line, "audit ready: summary to ");
    abuf_put(&line, topic, topic_len);
    abuf_puts(&line, " on every tick, ");
    abuf_put_u64(&line, excluded.count);
    abuf_puts(&line, use_kv ? " excluded prefix(es), counters in the key-value store"
                            : " excluded prefix(es), counters in memory");
    log_buf(LOG_INFO, &line);
    abuf_free(&line);
    return true;
}

void exports_mqtt_broker_plugin_connection_events_connected(
    exports_mqtt_broker_plugin_connection_events_client_summary_t *client, bool session_present) {
    (void)session_present;
    if (!skip(&client->client_id)) count(&client->client_id, AUDIT_CONNECTED, 0);
    /* Arguments of an export are owned by the callee. */
    exports_mqtt_broker_plugin_connection_events_client_summary_free(client);
}

void exports_mqtt_broker_plugin_connection_events_disconnected(observer_string_t *client_id,
                                                               observer_string_t *reason) {
    if (!skip(client_id)) {
        load_totals();
        audit_totals_disconnect(&totals, view(reason));
        store_totals();
    }
    observer_string_free(client_id);
    observer_string_free(reason);
}

void exports_mqtt_broker_plugin_connection_events_session_expired(observer_string_t *client_id) {
    if (!skip(client_id)) {
        load_totals();
        totals.expired++;
        store_totals();
    }
    observer_string_free(client_id);
}

void exports_mqtt_broker_plugin_subscription_events_subscribed(
    observer_string_t *client_id, observer_string_t *filter, exports_mqtt_broker_plugin_subscription_events_qos_t qos) {
    (void)qos;
    if (!skip(client_id)) count(client_id, AUDIT_SUBSCRIBED, 0);
    observer_string_free(client_id);
    observer_string_free(filter);
}

void exports_mqtt_broker_plugin_subscription_events_unsubscribed(observer_string_t *client_id,
                                                                 observer_string_t *filter) {
    observer_string_free(client_id);
    observer_string_free(filter);
}

void exports_mqtt_broker_plugin_message_events_published(observer_string_t *client_id, observer_string_t *msg_topic,
                                                         exports_mqtt_broker_plugin_message_events_qos_t qos,
                                                         bool retain, uint32_t payload_size, uint32_t subscribers) {
    (void)qos;
    (void)retain;
    (void)subscribers;
    if (!skip(client_id)) count(client_id, AUDIT_PUBLISHED, payload_size);
    observer_string_free(client_id);
    observer_string_free(msg_topic);
}

void exports_mqtt_broker_plugin_message_events_dropped(observer_string_t *client_id, observer_string_t *msg_topic,
                                                       observer_string_t *reason) {
    /* The plugin's own summaries (QoS 0, so dropped for every offline persistent session
     * subscribed to them) are not client traffic. */
    bool own = msg_topic->len == topic_len && memcmp(msg_topic->ptr, topic, topic_len) == 0;
    if (!own && !skip(client_id)) count(client_id, AUDIT_DROPPED, 0);
    observer_string_free(client_id);
    observer_string_free(msg_topic);
    observer_string_free(reason);
}

/* Whether the reload in force as `generation` was counted already (by this instance or, via
 * the store, by another); records it as counted when not. */
static bool reload_counted(uint64_t generation) {
    static audit_reload_t last; /* without the store */
    uint64_t now = mqtt_broker_plugin_host_now_millis();
    if (!use_kv) {
        if (audit_reload_duplicate(&last, generation, now)) return true;
        last = (audit_reload_t){generation, now};
        return false;
    }
    abuf_t key, value;
    abuf_init(&key);
    abuf_init(&value);
    abuf_puts(&key, "reload");
    audit_reload_t stored = {0, 0};
    bool found = false;
    bool duplicate = false;
    if (kv_read(&key, &value, &found) && found &&
        audit_reload_decode((const uint8_t *)value.ptr, value.len, &stored)) {
        duplicate = audit_reload_duplicate(&stored, generation, now);
    }
    if (!duplicate) {
        uint8_t bin[AUDIT_RELOAD_LEN];
        audit_reload_encode(&(audit_reload_t){generation, now}, bin);
        kv_write(&key, (const char *)bin, sizeof bin);
    }
    abuf_free(&key);
    abuf_free(&value);
    return duplicate;
}

void exports_mqtt_broker_plugin_broker_events_config_reloaded(uint64_t generation, bool ok,
                                                              observer_string_t *maybe_error) {
    /* A refused reload changes no generation and starts no plugin: each is counted. */
    if (ok && reload_counted(generation)) {
        abuf_t line;
        abuf_init(&line);
        abuf_puts(&line, "audit: the reload to generation ");
        abuf_put_u64(&line, generation);
        abuf_puts(&line, " was reported again (to the outgoing and the incoming plugin); counted once");
        log_buf(MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_DEBUG, &line);
        abuf_free(&line);
    } else {
        load_totals();
        if (ok) {
            totals.reloads++;
        } else {
            totals.reload_failures++;
        }
        store_totals();
    }
    /* Nothing is published here: the next tick carries the new counts. The error is NULL
     * when there is none. */
    if (maybe_error != NULL) observer_string_free(maybe_error);
}

void exports_mqtt_broker_plugin_timer_tick(uint64_t now_millis) {
    load_totals();
    abuf_t payload;
    abuf_init(&payload);
    audit_summary_json(&payload, &totals, now_millis);
    if (!payload.failed) {
        mqtt_broker_plugin_publish_outgoing_message_t msg = {
            .topic = {(uint8_t *)topic, topic_len},
            .payload = {(uint8_t *)payload.ptr, payload.len},
            .qos = MQTT_BROKER_PLUGIN_TYPES_QOS_AT_MOST_ONCE,
            .retain = true,
            .properties = {.is_some = false},
        };
        observer_string_t err = {NULL, 0};
        if (!mqtt_broker_plugin_publish_publish(&msg, &err)) {
            astr_t t = {topic, topic_len};
            LOG_ONCE(&publish_error_logged, astr("cannot publish the summary to "), t, astr(": "), view(&err),
                     astr(" (grant capabilities: {publish: {topics: [\""), t,
                     astr("\"]}}); counting goes on; further publish errors are not logged"));
            observer_string_free(&err);
        }
    }
    abuf_free(&payload);
}
