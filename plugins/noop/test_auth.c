// Test plugins for authentication in plugin API 0.2 (used by tests/plugins_v02.rs), built
// by build.sh from this one file:
// - challenge-auth.wasm (world enhanced-authenticator): the MQTT 5 enhanced authentication
//   method `TEST-CHALLENGE`. The client's first Authentication Data is its user name; the
//   plugin challenges with `nonce-for-<user>` and keeps the user name in the exchange's
//   `state`; the client must answer `<user>:<secret>` (config `secret`, default `s3cret`),
//   and is then authenticated as <user> with the server data `welcome <user>`. Not a
//   secure method: it tests the host's exchange plumbing.
// - refuse-auth.wasm (world authenticator): refuses user `banned` with reason `banned` and
//   a Reason String for MQTT 5 clients, user `busy` with `server-busy` and no Reason
//   String; abstains for everyone else.
// Values a function returns are freed by the bindings' post-return: they are malloc'ed.
#include <stdlib.h>
#include <string.h>

#include WORLD_HEADER

typedef STRING_T str_t;

static char secret[128] = "s3cret";

static bool eq(const uint8_t *p, size_t n, const char *s) { return n == strlen(s) && memcmp(p, s, n) == 0; }


bool exports_mqtt_broker_plugin_lifecycle_init(exports_mqtt_broker_plugin_lifecycle_config_t *config, str_t *err) {
    (void)err;
    for (size_t i = 0; i < config->len; i++) {
        str_t *k = &config->ptr[i].f0, *v = &config->ptr[i].f1;
        if (eq(k->ptr, k->len, "secret") && v->len < sizeof secret) {
            memcpy(secret, v->ptr, v->len);
            secret[v->len] = 0;
        }
    }
    exports_mqtt_broker_plugin_lifecycle_config_free(config);
    return true;
}

#ifdef CHALLENGE
static void bytes_dup(uint8_t **ptr, size_t *len, const void *src, size_t n) {
    *ptr = malloc(n ? n : 1);
    memcpy(*ptr, src, n);
    *len = n;
}

typedef exports_mqtt_broker_plugin_enhanced_auth_auth_step_t step_t;

static void fail(step_t *ret, const char *why) {
    ret->tag = EXPORTS_MQTT_BROKER_PLUGIN_ENHANCED_AUTH_AUTH_STEP_FAIL;
    ret->val.fail.reason = MQTT_BROKER_PLUGIN_TYPES_DENY_REASON_BAD_CREDENTIALS;
    enhanced_authenticator_string_dup(&ret->val.fail.message, why);
}

void exports_mqtt_broker_plugin_enhanced_auth_methods(enhanced_authenticator_list_string_t *ret) {
    ret->len = 1;
    ret->ptr = malloc(sizeof(str_t));
    enhanced_authenticator_string_dup(&ret->ptr[0], "TEST-CHALLENGE");
}

void exports_mqtt_broker_plugin_enhanced_auth_start(str_t *method, enhanced_authenticator_list_u8_t *data, step_t *ret) {
    if (data->len == 0 || data->len > 64) {
        fail(ret, "no user name in the first Authentication Data");
    } else {
        char nonce[80] = "nonce-for-";
        memcpy(nonce + 10, data->ptr, data->len);
        ret->tag = EXPORTS_MQTT_BROKER_PLUGIN_ENHANCED_AUTH_AUTH_STEP_CHALLENGE;
        bytes_dup(&ret->val.challenge.data.ptr, &ret->val.challenge.data.len, nonce, 10 + data->len);
        bytes_dup(&ret->val.challenge.state.ptr, &ret->val.challenge.state.len, data->ptr, data->len);
    }
    enhanced_authenticator_string_free(method);
    enhanced_authenticator_list_u8_free(data);
}

void exports_mqtt_broker_plugin_enhanced_auth_continue_auth(str_t *method, enhanced_authenticator_list_u8_t *data,
                                                            enhanced_authenticator_list_u8_t *state, step_t *ret) {
    // Expected answer: <user>:<secret>, the user being the state.
    char expected[256];
    size_t n = state->len, s = strlen(secret);
    bool ok = n + 1 + s < sizeof expected;
    if (ok) {
        memcpy(expected, state->ptr, n);
        expected[n] = ':';
        memcpy(expected + n + 1, secret, s);
        ok = data->len == n + 1 + s && memcmp(data->ptr, expected, data->len) == 0;
    }
    if (ok) {
        ret->tag = EXPORTS_MQTT_BROKER_PLUGIN_ENHANCED_AUTH_AUTH_STEP_SUCCESS;
        bytes_dup(&ret->val.success.username.ptr, &ret->val.success.username.len, state->ptr, n);
        char welcome[80] = "welcome ";
        memcpy(welcome + 8, state->ptr, n);
        ret->val.success.data.is_some = true;
        bytes_dup(&ret->val.success.data.val.ptr, &ret->val.success.data.val.len, welcome, 8 + n);
    } else {
        fail(ret, "wrong answer to the challenge");
    }
    enhanced_authenticator_string_free(method);
    enhanced_authenticator_list_u8_free(data);
    enhanced_authenticator_list_u8_free(state);
}

bool exports_mqtt_broker_plugin_enhanced_auth_knows(str_t *method, str_t *username) {
    enhanced_authenticator_string_free(method);
    enhanced_authenticator_string_free(username);
    return true;
}
#endif

#ifdef REFUSE
void exports_mqtt_broker_plugin_authenticate_authenticate(exports_mqtt_broker_plugin_authenticate_borrow_client_t client,
                                                          exports_mqtt_broker_plugin_authenticate_credentials_t *credentials,
                                                          exports_mqtt_broker_plugin_authenticate_auth_outcome_t *ret) {
    mqtt_broker_plugin_types_client_drop_borrow(client);
    authenticator_option_string_t *u = &credentials->username;
    if (u->is_some && eq(u->val.ptr, u->val.len, "banned")) {
        ret->tag = MQTT_BROKER_PLUGIN_TYPES_AUTH_OUTCOME_REFUSE;
        ret->val.refuse.reason = MQTT_BROKER_PLUGIN_TYPES_DENY_REASON_BANNED;
        authenticator_string_dup(&ret->val.refuse.message, "user is on the ban list");
        authenticator_string_dup(&ret->val.refuse.reason_string, "banned: ask the operator");
    } else if (u->is_some && eq(u->val.ptr, u->val.len, "busy")) {
        ret->tag = MQTT_BROKER_PLUGIN_TYPES_AUTH_OUTCOME_DENY;
        ret->val.deny.reason = MQTT_BROKER_PLUGIN_TYPES_DENY_REASON_SERVER_BUSY;
        authenticator_string_dup(&ret->val.deny.message, "too many logins now");
    } else {
        ret->tag = MQTT_BROKER_PLUGIN_TYPES_AUTH_OUTCOME_ABSTAIN;
    }
    exports_mqtt_broker_plugin_authenticate_credentials_free(credentials);
}
#endif
