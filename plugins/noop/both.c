// both-transforms.wasm: a component that exports both `transform` and `fast-transform`
// (world wit-both/both.wit), which the broker must refuse to load (tests/plugins_v02.rs).
// Both hooks keep every message; it never gets to run.
#include "gen/both-transforms/both_transforms.h"

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               both_transforms_string_t *err) {
    (void)err;
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    return true;
}

void exports_mqtt_broker_plugin_transform_transform(exports_mqtt_broker_plugin_transform_borrow_client_t client,
                                                    exports_mqtt_broker_plugin_transform_borrow_message_t message,
                                                    exports_mqtt_broker_plugin_transform_transform_result_t *ret) {
    mqtt_broker_plugin_types_client_drop_borrow(client);
    mqtt_broker_plugin_types_message_drop_borrow(message);
    ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_KEEP;
    ret->additional.ptr = 0;
    ret->additional.len = 0;
}

exports_mqtt_broker_plugin_fast_transform_verdict_t exports_mqtt_broker_plugin_fast_transform_transform(void) {
    return EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP;
}
