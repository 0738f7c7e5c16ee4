/*
 * device-acl: an mqtt-broker authorizer plugin in C (clang + wasi-libc + wit-bindgen).
 *
 * Each device may publish only under `devices/{client id}/#` and subscribe only within
 * `commands/{client id}/#`; users named in `admin_users` may do anything. The decisions are
 * in policy.h (tested natively by test_policy.c); this file adapts them to the WIT interface.
 */
#include "gen/authorizer.h"
#include "policy.h"

#include <stdlib.h>
#include <string.h>

/* Comma-separated admin user names from the config (default "admin"); one per instance. */
static authorizer_string_t admins;

static policy_str_t view(const authorizer_string_t *s) {
    return (policy_str_t){(const char *)s->ptr, s->len};
}

static bool key_is(const authorizer_string_t *s, const char *key) {
    return s->len == strlen(key) && memcmp(s->ptr, key, s->len) == 0;
}

bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config,
                                               authorizer_string_t *err) {
    bool ok = true;
    authorizer_string_dup(&admins, "admin");
    for (size_t i = 0; i < config->len; i++) {
        authorizer_tuple2_string_string_t *kv = &config->ptr[i];
        if (key_is(&kv->f0, "admin_users")) {
            authorizer_string_free(&admins);
            authorizer_string_dup_n(&admins, (const char *)kv->f1.ptr, kv->f1.len);
        } else {
            /* A typo in the config should refuse loading, not silently change the policy. */
            authorizer_string_dup(err, "unknown config key (known: admin_users)");
            ok = false;
        }
    }
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    if (ok) {
        authorizer_string_t msg;
        authorizer_string_dup(&msg, "device-acl ready");
        mqtt_broker_plugin_host_log(MQTT_BROKER_PLUGIN_HOST_LOG_LEVEL_INFO, &msg);
        authorizer_string_free(&msg);
    }
    return ok;
}

exports_mqtt_broker_plugin_authorize_decision_t exports_mqtt_broker_plugin_authorize_authorize(
    exports_mqtt_broker_plugin_authorize_client_info_t *client,
    exports_mqtt_broker_plugin_authorize_acl_request_t *request) {
    policy_action_t action = POLICY_PUBLISH;
    switch (request->action) {
    case MQTT_BROKER_PLUGIN_TYPES_ACL_ACTION_PUBLISH: action = POLICY_PUBLISH; break;
    case MQTT_BROKER_PLUGIN_TYPES_ACL_ACTION_SUBSCRIBE: action = POLICY_SUBSCRIBE; break;
    case MQTT_BROKER_PLUGIN_TYPES_ACL_ACTION_DELIVER: action = POLICY_DELIVER; break;
    }
    policy_str_t none = {NULL, 0};
    policy_decision_t d = policy_decide(action, view(&client->client_id),
                                        client->username.is_some ? view(&client->username.val) : none,
                                        client->username.is_some, view(&admins), view(&request->topic));
    /* Arguments are owned by the callee. */
    exports_mqtt_broker_plugin_authorize_client_info_free(client);
    exports_mqtt_broker_plugin_authorize_acl_request_free(request);
    return d == POLICY_ALLOW ? MQTT_BROKER_PLUGIN_TYPES_DECISION_ALLOW : MQTT_BROKER_PLUGIN_TYPES_DECISION_DENY;
}
