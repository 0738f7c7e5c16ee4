// Plugins that do nothing, for measuring what a plugin call costs the broker
// (examples/plugin_bench.rs): an authorizer that allows everything and a transformer that
// keeps every message, each built for plugin API 0.1 and 0.2 from this one file.
//
// Build: bash build.sh (one component per API version and hook; see the top of build.sh).
// The arguments of an exported function belong to the callee: 0.1 hands over records with
// strings that must be freed; 0.2 hands over two borrowed handles and a small record;
// 0.2's fast-transform hands over nothing.
#include WORLD_HEADER

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config, STRING_T *err) {
    (void)err;
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    return true;
}

#if defined(HOOK_AUTHORIZE) && API == 1
exports_mqtt_broker_plugin_authorize_decision_t exports_mqtt_broker_plugin_authorize_authorize(
    exports_mqtt_broker_plugin_authorize_client_info_t *client,
    exports_mqtt_broker_plugin_authorize_acl_request_t *request) {
    exports_mqtt_broker_plugin_authorize_client_info_free(client);
    exports_mqtt_broker_plugin_authorize_acl_request_free(request);
    return MQTT_BROKER_PLUGIN_TYPES_DECISION_ALLOW;
}
#elif defined(HOOK_AUTHORIZE) && API == 2
exports_mqtt_broker_plugin_authorize_decision_t exports_mqtt_broker_plugin_authorize_authorize(
    exports_mqtt_broker_plugin_authorize_borrow_client_t client,
    exports_mqtt_broker_plugin_authorize_acl_request_t *request) {
    // [canonical ABI] a borrowed handle must be dropped before the export returns, or the
    // call traps with "borrow handles still remain at the end of the call".
    mqtt_broker_plugin_types_client_drop_borrow(client);
    exports_mqtt_broker_plugin_authorize_acl_request_free(request);
    return MQTT_BROKER_PLUGIN_TYPES_DECISION_ALLOW;
}
#elif defined(HOOK_TRANSFORM) && API == 1
void exports_mqtt_broker_plugin_transform_transform(
    exports_mqtt_broker_plugin_transform_client_info_t *client,
    exports_mqtt_broker_plugin_transform_message_t *message,
    exports_mqtt_broker_plugin_transform_transform_result_t *ret) {
    exports_mqtt_broker_plugin_transform_client_info_free(client);
    exports_mqtt_broker_plugin_transform_message_free(message);
    ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_KEEP;
    ret->additional.ptr = 0;
    ret->additional.len = 0;
}
#elif defined(HOOK_TRANSFORM) && API == 2
void exports_mqtt_broker_plugin_transform_transform(
    exports_mqtt_broker_plugin_transform_borrow_client_t client,
    exports_mqtt_broker_plugin_transform_borrow_message_t message,
    exports_mqtt_broker_plugin_transform_transform_result_t *ret) {
    mqtt_broker_plugin_types_client_drop_borrow(client);
    mqtt_broker_plugin_types_message_drop_borrow(message);
    ret->action.tag = MQTT_BROKER_PLUGIN_TYPES_TRANSFORM_ACTION_KEEP;
    ret->additional.ptr = 0;
    ret->additional.len = 0;
}
#elif defined(HOOK_FAST_TRANSFORM)
// fast-transform: nothing is handed over, nothing to free; the answer is a number.
exports_mqtt_broker_plugin_fast_transform_verdict_t exports_mqtt_broker_plugin_fast_transform_transform(void) {
    return EXPORTS_MQTT_BROKER_PLUGIN_FAST_TRANSFORM_VERDICT_KEEP;
}
#endif
