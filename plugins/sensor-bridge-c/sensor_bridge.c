/*
 * sensor-bridge-c: the sensor bridge (../sensor-bridge, JavaScript) as a compiled mqtt-broker
 * transformer, in C (clang + wasi-libc + wit-bindgen), against WIT mqtt-broker:plugin@0.2.0,
 * world `transformer`. Same config, same rules, same output bytes.
 *
 * The rules are in bridge.c (tested natively by test_bridge.c); this file adapts them to the
 * WIT interface. What it does per call, cheapest first:
 *   - reads the topic (`message.topic`) and tries the rules: a topic of no rule costs one
 *     host call and is kept;
 *   - only for a matched topic: reads the payload, the clock, the QoS and the retain flag
 *     (every rule yields at least one message, which needs the last two).
 *
 * Memory: everything a call allocates (the topic and payload the host copies in through
 * `cabi_realloc`, the returned list of messages) comes from one arena that the next call
 * releases at once; so the post-return function that wit-bindgen generates (which would
 * `free` each string) is replaced by one that does nothing.
 */
#include "gen/transformer.h"
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

/*
 * Called by the host once it has read `transform`'s result. Overrides wit-bindgen's weak one,
 * which would `free` every string: the result lives in arenas that the next call resets.
 */
__attribute__((__export_name__("cabi_post_mqtt-broker:plugin/transform@0.2.0#transform"))) void
__wasm_export_exports_mqtt_broker_plugin_transform_transform_post_return(uint8_t *ret) {
    (void)ret;
}

static void host_log(sb_log_level level, sb_str line) {
    transformer_string_t s = {(uint8_t *)(uintptr_t)line.ptr, line.len};
    mqtt_broker_plugin_host_log((mqtt_broker_plugin_host_log_level_t)level, &s);
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               transformer_string_t *err) {
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

void exports_mqtt_broker_plugin_transform_transform(exports_mqtt_broker_plugin_transform_borrow_client_t client,
                                                    exports_mqtt_broker_plugin_transform_borrow_message_t message,
                                                    exports_mqtt_broker_plugin_transform_transform_result_t *ret) {
    /* [canonical ABI] borrowed handles must be dropped before the export returns (or the
     * call traps): the client right away (the bridge never asks about it), the message after
     * its last use on each path below. */
    mqtt_broker_plugin_types_client_drop_borrow(client);
    sb_arena_reset(&call_arena);
    ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_KEEP;
    ret->additional.ptr = NULL;
    ret->additional.len = 0;
    if (bridge == NULL) {
        mqtt_broker_plugin_types_message_drop_borrow(message);
        return;
    }

    transformer_string_t topic_s;
    mqtt_broker_plugin_types_method_message_topic(message, &topic_s);
    sb_str topic = {(const char *)topic_s.ptr, topic_s.len};
    sb_match m;
    if (!sb_match_topic(bridge, topic, &m)) {
        mqtt_broker_plugin_types_message_drop_borrow(message);
        return;
    }

    /* A rule matched: now the payload is needed (and the clock, for `ts`). */
    transformer_list_u8_t payload;
    mqtt_broker_plugin_types_method_message_payload(message, &payload);
    uint64_t now = mqtt_broker_plugin_host_now_millis();
    /* The bridged messages keep the QoS and retain flag of the raw one. */
    mqtt_broker_plugin_types_qos_t qos = mqtt_broker_plugin_types_method_message_qos(message);
    bool retain = mqtt_broker_plugin_types_method_message_retain(message);
    mqtt_broker_plugin_types_message_drop_borrow(message);
    const sb_result *r = sb_process(bridge, &m, topic, payload.ptr, payload.len, now);

    double stats_ms = sb_bridge_stats_millis(bridge);
    if (stats_ms > 0 && (double)now - (double)last_stats >= stats_ms) {
        last_stats = now;
        host_log(SB_LOG_INFO, sb_stats_line(bridge));
    }
    sb_log_level level = sb_bridge_log_level(bridge);
    if (level != SB_LOG_OFF) {
        for (size_t i = 0; i < r->n_problems; i++) host_log(level, sb_problem_line(bridge, r, i, topic));
    }

    /* Error reports are events: never retained. */
    mqtt_broker_plugin_types_outgoing_message_t *out =
        sb_arena_alloc(&call_arena, (r->n_outputs + 1) * sizeof *out);
    for (size_t i = 0; i < r->n_outputs; i++) {
        const sb_output *o = &r->outputs[i];
        memset(&out[i], 0, sizeof out[i]);
        out[i].topic = (transformer_string_t){(uint8_t *)(uintptr_t)o->topic.ptr, o->topic.len};
        out[i].payload = (transformer_list_u8_t){(uint8_t *)(uintptr_t)o->payload.ptr, o->payload.len};
        out[i].qos = qos;
        out[i].retain = o->error ? false : retain;
        out[i].properties.is_some = false;
    }
    ret->additional.ptr = out;
    ret->additional.len = r->n_outputs;
    if (r->replace) ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_DROP;
}
