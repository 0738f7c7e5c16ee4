/* Native unit tests of policy.h: `gcc -Wall -Werror -o /tmp/test_policy test_policy.c && /tmp/test_policy` */
#include "policy.h"
#include <stdio.h>

static int failures = 0;
#define S(lit) ((policy_str_t){(lit), sizeof(lit) - 1})
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                    \
        }                                                                  \
    } while (0)

int main(void) {
    policy_str_t admins = S("admin, ops");
    policy_str_t none = {NULL, 0};
    /* Publish: own subtree only. */
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a"), none, false, admins, S("devices/dev-a/temp")) == POLICY_ALLOW);
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a"), none, false, admins, S("devices/dev-a")) == POLICY_ALLOW);
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a"), none, false, admins, S("devices/dev-b/temp")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a"), none, false, admins, S("devices/dev-ab/temp")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a"), none, false, admins, S("devices/dev-")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a"), none, false, admins, S("commands/dev-a/x")) == POLICY_DENY);
    /* Subscribe: own commands only, wildcards inside allowed. */
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("dev-a"), none, false, admins, S("commands/dev-a/#")) == POLICY_ALLOW);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("dev-a"), none, false, admins, S("commands/dev-a/+/x")) == POLICY_ALLOW);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("dev-a"), none, false, admins, S("commands/#")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("dev-a"), none, false, admins, S("commands/+/x")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("dev-a"), none, false, admins, S("commands/dev-b/#")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_DELIVER, S("dev-a"), none, false, admins, S("commands/dev-a/reboot")) == POLICY_ALLOW);
    /* Client ids that could escape their subtree are refused. */
    CHECK(policy_decide(POLICY_PUBLISH, S("dev-a/x"), none, false, admins, S("devices/dev-a/x/y")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("+"), none, false, admins, S("commands/+/#")) == POLICY_DENY);
    /* Admins may do anything; names match whole list entries only. */
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("console"), S("admin"), true, admins, S("#")) == POLICY_ALLOW);
    CHECK(policy_decide(POLICY_PUBLISH, S("console"), S("ops"), true, admins, S("commands/dev-a/x")) == POLICY_ALLOW);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("console"), S("adm"), true, admins, S("#")) == POLICY_DENY);
    CHECK(policy_decide(POLICY_SUBSCRIBE, S("console"), S(""), true, S("admin,"), S("#")) == POLICY_DENY);
    if (failures) {
        fprintf(stderr, "%d policy test(s) failed\n", failures);
        return 1;
    }
    printf("device-acl policy: all tests passed\n");
    return 0;
}
