/*
 * device-acl policy: pure functions, no Wasm or MQTT types, so that they can be unit-tested
 * natively (test_policy.c) and reused by other plugins.
 *
 * A device may publish only under `devices/{client id}/#` and subscribe only within
 * `commands/{client id}/#`; admin users may do anything.
 */
#ifndef DEVICE_ACL_POLICY_H
#define DEVICE_ACL_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* A borrowed byte string (not NUL-terminated). */
typedef struct {
    const char *ptr;
    size_t len;
} policy_str_t;

/* Whether `id` can be used inside a topic without escaping its own subtree: non-empty and
 * free of the level separator and the wildcards. */
static inline bool policy_client_id_ok(policy_str_t id) {
    if (id.len == 0) return false;
    for (size_t i = 0; i < id.len; i++) {
        char c = id.ptr[i];
        if (c == '/' || c == '+' || c == '#' || c == '\0') return false;
    }
    return true;
}

/* Whether `topic` (a name or a filter) lies within `{root}/{id}/#`: it equals `{root}/{id}`
 * or starts with `{root}/{id}/`. Wildcards after that prefix stay inside the subtree. */
static inline bool policy_within(policy_str_t topic, const char *root, policy_str_t id) {
    size_t root_len = strlen(root);
    size_t prefix = root_len + 1 + id.len;
    if (topic.len < prefix) return false;
    if (memcmp(topic.ptr, root, root_len) != 0) return false;
    if (topic.ptr[root_len] != '/') return false;
    if (memcmp(topic.ptr + root_len + 1, id.ptr, id.len) != 0) return false;
    return topic.len == prefix || topic.ptr[prefix] == '/';
}

/* Whether `name` is one of the comma-separated names in `list` (spaces around names ignored). */
static inline bool policy_in_list(policy_str_t name, policy_str_t list) {
    size_t i = 0;
    while (i <= list.len) {
        size_t start = i;
        while (i < list.len && list.ptr[i] != ',') i++;
        size_t end = i;
        while (start < end && list.ptr[start] == ' ') start++;
        while (end > start && list.ptr[end - 1] == ' ') end--;
        if (end - start == name.len && name.len > 0 && memcmp(list.ptr + start, name.ptr, name.len) == 0) return true;
        i++;
    }
    return false;
}

typedef enum { POLICY_PUBLISH, POLICY_SUBSCRIBE, POLICY_DELIVER } policy_action_t;
typedef enum { POLICY_ALLOW, POLICY_DENY } policy_decision_t;

/* The decision for one request. `username` may be {NULL, 0} for clients without one. */
static inline policy_decision_t policy_decide(policy_action_t action, policy_str_t client_id, policy_str_t username,
                                              bool has_username, policy_str_t admins, policy_str_t topic) {
    if (has_username && policy_in_list(username, admins)) return POLICY_ALLOW;
    if (!policy_client_id_ok(client_id)) return POLICY_DENY;
    switch (action) {
    case POLICY_PUBLISH:
        return policy_within(topic, "devices", client_id) ? POLICY_ALLOW : POLICY_DENY;
    case POLICY_SUBSCRIBE:
    case POLICY_DELIVER:
        return policy_within(topic, "commands", client_id) ? POLICY_ALLOW : POLICY_DENY;
    }
    return POLICY_DENY;
}

#endif
