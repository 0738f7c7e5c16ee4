/*
 * ceiling: a transformer with the sensor bridge's output shape and almost none of its work,
 * for measuring what any plugin with that shape can reach on this broker
 * (`cargo run --release --example sensor_bridge_bench -- --ceiling
 * plugins/sensor-bridge-c/gen/ceiling.wasm`). Not a plugin to deploy.
 *
 * Per message it reads only the topic: a topic ending in `/status` is kept; any other is kept
 * and gets one constant additional message, except one ending in `/dht`, which is dropped
 * (replaced by the additional one), as the example config's rules do; with the config key
 * `replace_raw: true` (the benchmark's --replace-raw) every one is dropped. So the broker routes
 * exactly the messages it routes with the bridge, and pays one call and one returned message
 * per reading (through `fast-transform`, as the bridge), without the payload, the clock, the QoS, the retain flag or any parsing.
 * build.sh builds it into gen/ceiling.wasm.
 */
#include "gen/fast_transformer.h"

#include <stdlib.h>
#include <string.h>

/* The one additional message (static: nothing to free). */
static mqtt_broker_plugin_current_outgoing_message_t extra;
/* Config `replace_raw: true`: every raw message that gets an additional one is dropped. */
static bool replace_raw;

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               fast_transformer_string_t *err) {
    (void)err;
    replace_raw = false;
    for (size_t i = 0; i < config->len; i++) {
        fast_transformer_string_t *k = &config->ptr[i].f0, *v = &config->ptr[i].f1;
        if (k->len == 11 && memcmp(k->ptr, "replace_raw", 11) == 0 && v->len == 4 && memcmp(v->ptr, "true", 4) == 0)
            replace_raw = true;
    }
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    static const char topic[] = "home/esp0000/temperature";
    static const char payload[] = "{\"device\":\"esp0000\",\"temperature\":25.5,\"unit\":\"C\",\"ts\":1795000000000}";
    extra.topic = (fast_transformer_string_t){(uint8_t *)(uintptr_t)topic, sizeof topic - 1};
    extra.payload = (fast_transformer_list_u8_t){(uint8_t *)(uintptr_t)payload, sizeof payload - 1};
    extra.qos = MQTT_BROKER_PLUGIN_TYPES_QOS_AT_MOST_ONCE;
    return true;
}

static bool ends_with(const fast_transformer_string_t *s, const char *suffix) {
    size_t n = strlen(suffix);
    return s->len >= n && memcmp(s->ptr + s->len - n, suffix, n) == 0;
}

exports_mqtt_broker_plugin_fast_transform_verdict_t exports_mqtt_broker_plugin_fast_transform_transform(void) {
    fast_transformer_string_t topic;
    mqtt_broker_plugin_current_topic(&topic);
    exports_mqtt_broker_plugin_fast_transform_verdict_t verdict = EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP;
    if (!ends_with(&topic, "/status")) {
        fast_transformer_string_t err;
        if (!mqtt_broker_plugin_current_add(&extra, &err)) fast_transformer_string_free(&err);
        if (replace_raw || ends_with(&topic, "/dht")) verdict = EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_DROP;
    }
    fast_transformer_string_free(&topic);
    return verdict;
}
