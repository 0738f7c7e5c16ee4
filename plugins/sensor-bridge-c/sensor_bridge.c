/*
 * sensor-bridge-c: the sensor bridge (../sensor-bridge, JavaScript) as a compiled mqtt-broker
 * transformer, in C (clang + wasi-libc + wit-bindgen), against WIT mqtt-broker:plugin@0.2.0,
 * world `fast-transformer`. Same config, same rules, same output bytes.
 *
 * The rules are in bridge.c (tested natively by test_bridge.c); this file adapts them to the
 * WIT interface. It exports `fast-transform` (world `fast-transformer`): a call hands over
 * nothing and returns a verdict; the bridge reads what it needs through `current` and hands
 * its messages to `current.add`. Per call it
 *   - reads the topic, payload, QoS, retain flag and time of arrival in one host call
 *     (`current.read-message`) and tries the rules: a topic of no rule is kept;
 *   - adds each message a matched rule makes (`current.add`); a replacing rule answers
 *     `drop` (its messages are the additions).
 *
 * Memory: everything a call allocates (the topic and payload the host copies in through
 * `cabi_realloc`, the messages it builds) comes from one arena that the next call releases
 * at once.
 */
#include "gen/fast_transformer.h"
#include "bridge.h"

#include <stdlib.h>
#include <string.h>

/* The parsed config of this instance (NULL until `init` accepted one). */
static sb_bridge *bridge;
/* When the counters were last logged (broker time, ms). */
static uint64_t last_stats;
/* Memory of the current call: released when the next call starts. */
static sb_arena call_arena;

/*
 * The canonical ABI's allocator (the host calls it to copy strings and lists in). Overrides
 * wit-bindgen's weak malloc-based one: allocations come from the call arena.
 */
__attribute__((__export_name__("cabi_realloc"))) void *cabi_realloc(void *ptr, size_t old_size, size_t align,
                                                                    size_t new_size) {
    if (new_size == 0) return (void *)align;
    void *p = sb_arena_alloc(&call_arena, new_size); /* 8-byte aligned: enough for every WIT type */
    if (ptr != NULL && old_size > 0) memcpy(p, ptr, old_size < new_size ? old_size : new_size);
    return p;
}

static void host_log(sb_log_level level, sb_str line) {
    fast_transformer_string_t s = {(uint8_t *)(uintptr_t)line.ptr, line.len};
    mqtt_broker_plugin_host_log((mqtt_broker_plugin_host_log_level_t)level, &s);
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               fast_transformer_string_t *err) {
    /* The config list was copied in through cabi_realloc (the call arena): read, never freed. */
    sb_pair *pairs = sb_arena_alloc(&call_arena, (config->len + 1) * sizeof *pairs);
    for (size_t i = 0; i < config->len; i++) {
        pairs[i].key = (sb_str){(const char *)config->ptr[i].f0.ptr, config->ptr[i].f0.len};
        pairs[i].value = (sb_str){(const char *)config->ptr[i].f1.ptr, config->ptr[i].f1.len};
    }
    char *error = NULL;
    sb_bridge *b = sb_bridge_new(pairs, config->len, &error);
    sb_arena_reset(&call_arena);
    if (b == NULL) {
        /* The generated post-return frees `err` with free(): malloc'ed, not from the arena. */
        err->len = strlen(error);
        err->ptr = (uint8_t *)error;
        if (err->len == 0) {
            free(error);
            err->ptr = NULL;
        }
        return false;
    }
    sb_bridge_free(bridge);
    bridge = b;
    last_stats = mqtt_broker_plugin_host_now_millis();
    host_log(SB_LOG_DEBUG, sb_ready_line(bridge));
    return true;
}

exports_mqtt_broker_plugin_fast_transform_verdict_t exports_mqtt_broker_plugin_fast_transform_transform(void) {
    sb_arena_reset(&call_arena);
    if (bridge == NULL) return EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP;

    /* Topic, payload, QoS and retain flag in one host call: most topics reaching the bridge
     * are readings (the `topics:` filter of its config sends it little else). */
    mqtt_broker_plugin_current_incoming_message_t in;
    mqtt_broker_plugin_current_read_message(&in);
    sb_str topic = {(const char *)in.topic.ptr, in.topic.len};
    sb_match m;
    if (!sb_match_topic(bridge, topic, &m)) return EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP;

    /* `ts`: when the raw message arrived (the host's clock, as now-millis). The bridged
     * messages keep the QoS and retain flag of the raw one. */
    uint64_t now = in.received_millis;
    mqtt_broker_plugin_current_qos_t qos = in.qos;
    bool retain = in.retain;
    const sb_result *r = sb_process(bridge, &m, topic, in.payload.ptr, in.payload.len, now);

    double stats_ms = sb_bridge_stats_millis(bridge);
    if (stats_ms > 0 && (double)now - (double)last_stats >= stats_ms) {
        last_stats = now;
        host_log(SB_LOG_INFO, sb_stats_line(bridge));
    }
    sb_log_level level = sb_bridge_log_level(bridge);
    if (level != SB_LOG_OFF) {
        for (size_t i = 0; i < r->n_problems; i++) host_log(level, sb_problem_line(bridge, r, i, topic));
    }

    for (size_t i = 0; i < r->n_outputs; i++) {
        const sb_output *o = &r->outputs[i];
        mqtt_broker_plugin_current_outgoing_message_t out;
        memset(&out, 0, sizeof out);
        out.topic = (fast_transformer_string_t){(uint8_t *)(uintptr_t)o->topic.ptr, o->topic.len};
        out.payload = (fast_transformer_list_u8_t){(uint8_t *)(uintptr_t)o->payload.ptr, o->payload.len};
        out.qos = qos;
        /* Error reports are events: never retained. */
        out.retain = o->error ? false : retain;
        out.properties.is_some = false;
        fast_transformer_string_t err;
        if (!mqtt_broker_plugin_current_add(&out, &err)) {
            /* The broker refused it (an output topic the config made invalid): say so. */
            host_log(SB_LOG_WARN, (sb_str){(const char *)err.ptr, err.len});
        }
    }
    return r->replace ? EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_DROP
                      : EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP;
}
