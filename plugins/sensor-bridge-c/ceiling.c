/*
 * ceiling: a transformer with the sensor bridge's output shape and almost none of its work,
 * for measuring what any plugin with that shape can reach on this broker
 * (`cargo run --release --example sensor_bridge_bench -- --ceiling
 * plugins/sensor-bridge-c/gen/ceiling.wasm`). Not a plugin to deploy.
 *
 * Per message it reads only the topic: a topic ending in `/status` is kept; any other is kept
 * and gets one constant additional message, except one ending in `/dht`, which is dropped
 * (replaced by the additional one), as the example config's rules do. So the broker routes
 * exactly the messages it routes with the bridge, and pays one call and one returned message
 * per reading, without the payload, the clock, the QoS, the retain flag or any parsing.
 * build.sh builds it into gen/ceiling.wasm.
 */
#include "gen/transformer.h"

#include <stdlib.h>
#include <string.h>

/* The one additional message (static: nothing to free). */
static mqtt_broker_plugin_types_outgoing_message_t extra;

/* The result lives in static memory: nothing for the post-return function to free. */
__attribute__((__export_name__("cabi_post_mqtt-broker:plugin/transform@0.2.0#transform"))) void
__wasm_export_exports_mqtt_broker_plugin_transform_transform_post_return(uint8_t *ret) {
    (void)ret;
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               transformer_string_t *err) {
    (void)err;
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    static const char topic[] = "home/esp0000/temperature";
    static const char payload[] = "{\"device\":\"esp0000\",\"temperature\":25.5,\"unit\":\"C\",\"ts\":1795000000000}";
    extra.topic = (transformer_string_t){(uint8_t *)(uintptr_t)topic, sizeof topic - 1};
    extra.payload = (transformer_list_u8_t){(uint8_t *)(uintptr_t)payload, sizeof payload - 1};
    extra.qos = MQTT_BROKER_PLUGIN_TYPES_QOS_AT_MOST_ONCE;
    return true;
}

static bool ends_with(const transformer_string_t *s, const char *suffix) {
    size_t n = strlen(suffix);
    return s->len >= n && memcmp(s->ptr + s->len - n, suffix, n) == 0;
}

void exports_mqtt_broker_plugin_transform_transform(exports_mqtt_broker_plugin_transform_borrow_client_t client,
                                                    exports_mqtt_broker_plugin_transform_borrow_message_t message,
                                                    exports_mqtt_broker_plugin_transform_transform_result_t *ret) {
    /* [canonical ABI] borrowed handles are dropped before the export returns. */
    mqtt_broker_plugin_types_client_drop_borrow(client);
    transformer_string_t topic;
    mqtt_broker_plugin_types_method_message_topic(message, &topic);
    mqtt_broker_plugin_types_message_drop_borrow(message);
    ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_KEEP;
    ret->additional.ptr = NULL;
    ret->additional.len = 0;
    if (!ends_with(&topic, "/status")) {
        ret->additional.ptr = &extra;
        ret->additional.len = 1;
        if (ends_with(&topic, "/dht")) ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_DROP;
    }
    transformer_string_free(&topic);
}
