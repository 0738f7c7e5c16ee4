/*
 * Native unit tests of the C sensor bridge's rule logic (bridge.c), covering what the
 * JavaScript version's tests cover (the three files in ../sensor-bridge/test/): patterns, templates,
 * numbers, rounding, the four parsers, config errors, whole-message processing, counters.
 * Outputs are compared byte for byte where the JavaScript tests compare values.
 *
 *   clang-19 -O1 -g -fsanitize=address,undefined test_bridge.c bridge.c -lm -o test_bridge && ./test_bridge
 *
 * (test.sh does exactly that; build.sh runs it before building the component.)
 */
#include "bridge.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        checks++;                                                                                                      \
        if (!(cond)) {                                                                                                 \
            failures++;                                                                                                \
            fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond);                                        \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
        }                                                                                                              \
    } while (0)

static const uint64_t NOW = 1795000000000ull;

static sb_str S(const char *s) { return (sb_str){s, strlen(s)}; }

static bool str_is(sb_str a, const char *b) { return a.len == strlen(b) && memcmp(a.ptr, b, a.len) == 0; }

/* Test JSON is written with ' for " (and \' for an escaped quote, \" in JSON). */
static char *J(const char *text) {
    size_t n = strlen(text);
    char *out = malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '\\' && text[i + 1] == '\'') {
            out[o++] = '\\';
            out[o++] = '"';
            i++;
        } else {
            out[o++] = text[i] == '\'' ? '"' : text[i];
        }
    }
    out[o] = 0;
    return out;
}

/* The pairs `init` receives: `rules` (JSON) plus extra key/value pairs (NULL-terminated). */
static sb_bridge *try_bridge(char **error, const char *rules, ...) {
    sb_pair pairs[16];
    size_t n = 0;
    char *r = rules != NULL ? J(rules) : NULL;
    if (r != NULL) pairs[n++] = (sb_pair){S("rules"), S(r)};
    va_list ap;
    va_start(ap, rules);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL) break;
        const char *v = va_arg(ap, const char *);
        pairs[n++] = (sb_pair){S(k), S(v)};
    }
    va_end(ap);
    *error = NULL;
    sb_bridge *b = sb_bridge_new(pairs, n, error);
    free(r);
    return b;
}

#define BRIDGE(...) must_bridge(__LINE__, try_bridge(&error_, __VA_ARGS__, (const char *)NULL), error_)

static sb_bridge *must_bridge(int line, sb_bridge *b, char *error) {
    if (b == NULL) {
        fprintf(stderr, "line %d: config refused: %s\n", line, error);
        exit(1);
    }
    return b;
}

/* The config error for `rules` (and extra pairs), or "" if it was accepted. */
static char last_error[1024];
static const char *refusal(const char *rules, ...) {
    sb_pair pairs[16];
    size_t n = 0;
    char *r = rules != NULL ? J(rules) : NULL;
    if (r != NULL) pairs[n++] = (sb_pair){S("rules"), S(r)};
    va_list ap;
    va_start(ap, rules);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL) break;
        const char *v = va_arg(ap, const char *);
        pairs[n++] = (sb_pair){S(k), S(v)};
    }
    va_end(ap);
    char *error = NULL;
    sb_bridge *b = sb_bridge_new(pairs, n, &error);
    free(r);
    if (b != NULL) {
        sb_bridge_free(b);
        return "";
    }
    snprintf(last_error, sizeof last_error, "%s", error);
    free(error);
    return last_error;
}
#define REFUSAL(...) refusal(__VA_ARGS__, (const char *)NULL)

static bool starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static const sb_result *run_n(sb_bridge *b, const char *topic, const char *payload, size_t len) {
    sb_match m;
    if (!sb_match_topic(b, S(topic), &m)) return NULL;
    return sb_process(b, &m, S(topic), (const uint8_t *)payload, len, NOW);
}
static const sb_result *run(sb_bridge *b, const char *topic, const char *payload) {
    return run_n(b, topic, payload, strlen(payload));
}

static char *cstr(sb_str s) {
    static char bufs[8][2048];
    static int k = 0;
    char *o = bufs[k++ % 8];
    size_t n = s.len < 2047 ? s.len : 2047;
    memcpy(o, s.ptr, n);
    o[n] = 0;
    return o;
}

/* `{"device":"D","Q":V[,"unit":"U"],"ts":NOW}` */
static const char *reading_json(const char *device, const char *quantity, const char *value, const char *unit) {
    static char out[512];
    if (unit != NULL)
        snprintf(out, sizeof out, "{\"device\":\"%s\",\"%s\":%s,\"unit\":\"%s\",\"ts\":%llu}", device, quantity, value, unit,
                 (unsigned long long)NOW);
    else
        snprintf(out, sizeof out, "{\"device\":\"%s\",\"%s\":%s,\"ts\":%llu}", device, quantity, value, (unsigned long long)NOW);
    return out;
}

#define EXPECT_OUT(r, i, want_topic, want_payload)                                                                     \
    do {                                                                                                               \
        CHECK((r) != NULL && (r)->n_outputs > (size_t)(i), "no output %d", (int)(i));                                 \
        if ((r) != NULL && (r)->n_outputs > (size_t)(i)) {                                                             \
            CHECK(str_is((r)->outputs[i].topic, want_topic), "topic %s, want %s", cstr((r)->outputs[i].topic),        \
                  want_topic);                                                                                         \
            CHECK(str_is((r)->outputs[i].payload, want_payload), "payload %s\n   want %s",                             \
                  cstr((r)->outputs[i].payload), want_payload);                                                        \
        }                                                                                                              \
    } while (0)

/* The `reason` of error output i (the JSON string's text, unescaped only for \" and \\). */
static const char *reason_of(const sb_result *r, size_t i) {
    static char out[1024];
    out[0] = 0;
    if (r == NULL || i >= r->n_outputs) return "(no output)";
    const char *p = strstr(cstr(r->outputs[i].payload), ",\"reason\":\"");
    if (p == NULL) return "(no reason)";
    p += 11;
    size_t o = 0;
    while (*p && !(*p == '"' && p[-1] != '\\') && o < sizeof out - 1) {
        if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
        out[o++] = *p++;
    }
    out[o] = 0;
    return out;
}

static const char *FIRMWARE_RULES =
    "[{'name':'split','topic':'sensors/{device}/{kind:temperature|humidity}','quantity':'{kind}',"
    "'output':'home/{device}/{quantity}','quantities':{'temperature':{'unit':'C','round':1,'min':-40,'max':80},"
    "'humidity':{'unit':'%','round':0,'min':0,'max':100}}},"
    "{'name':'legacy','topic':'sensors_{device}/dht','quantity':'temperature','output':'home/{device}/legacy/temperature',"
    "'unit':'C','round':1,'min':-40,'max':80,'replace':true}]";

static char *error_;

/* ---------------------------------------------------------------------------------------- */
/* bridge.test.js */

static void valid_plain_reading(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES);
    const sb_result *r = run(b, "sensors/aloys/temperature", "25.5");
    CHECK(r != NULL && str_is(r->rule_name, "split"), "rule");
    CHECK(!r->replace, "keep the raw message by default");
    CHECK(r->n_outputs == 1, "%zu outputs", r->n_outputs);
    EXPECT_OUT(r, 0, "home/aloys/temperature", reading_json("aloys", "temperature", "25.5", "C"));
    r = run(b, "sensors/aloys/humidity", "41.5");
    EXPECT_OUT(r, 0, "home/aloys/humidity", reading_json("aloys", "humidity", "42", "%")); /* rounded to 0 decimals */
    sb_bridge_free(b);
}

static void first_rule_wins(void) {
    sb_bridge *b = BRIDGE("[{'name':'specific','topic':'sensors/{device}/temperature','quantity':'temperature','output':'a/{device}'},"
                          "{'name':'general','topic':'sensors/{device}/{kind}','quantity':'{kind}','output':'b/{device}/{quantity}'}]");
    const sb_result *r = run(b, "sensors/x/temperature", "1");
    CHECK(r != NULL && str_is(r->rule_name, "specific"), "specific");
    r = run(b, "sensors/x/pressure", "1");
    EXPECT_OUT(r, 0, "b/x/pressure", reading_json("x", "pressure", "1", NULL));
    CHECK(run(b, "other/x/temperature", "1") == NULL, "unmatched");
    CHECK(run(b, "sensors/x", "1") == NULL, "unmatched");
    sb_counters c = sb_bridge_counters(b);
    CHECK(c.messages == 4 && c.matched == 2 && c.readings == 2 && c.garbage == 0 && c.unmatched == 2, "counters %llu %llu",
          (unsigned long long)c.messages, (unsigned long long)c.unmatched);
    sb_bridge_free(b);
}

static void status_topics_do_not_match(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES);
    CHECK(run(b, "sensors/aloys/status", "online") == NULL, "status");
    sb_bridge_free(b);
}

static void replace_drops_the_raw_message(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES);
    const sb_result *r = run(b, "sensors_aloys/dht", "25.46");
    CHECK(r != NULL && r->replace, "replace");
    EXPECT_OUT(r, 0, "home/aloys/legacy/temperature", reading_json("aloys", "temperature", "25.5", "C"));
    sb_bridge_free(b);
}

static void garbage_goes_to_the_error_topic(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES);
    static const char *cases[][3] = {
        {"nan", "not a number: \\\"nan\\\"", "\"nan\""},
        {"NaN", "not a number: \\\"NaN\\\"", "\"NaN\""},
        {"", "empty value", "\"\""},
        {"hot", "not a number: \\\"hot\\\"", "\"hot\""},
        {"25,5", "not a number: \\\"25,5\\\"", "\"25,5\""},
        {"999.9", "out of range: 999.9 is above max 80", "\"999.9\""},
        {"-999.9", "out of range: -999.9 is below min -40", "\"-999.9\""},
    };
    size_t n = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n; i++) {
        const sb_result *r = run(b, "sensors/esp0001/temperature", cases[i][0]);
        CHECK(r != NULL && r->n_outputs == 1 && r->outputs[0].error, "%s", cases[i][0]);
        char want[512];
        snprintf(want, sizeof want,
                 "{\"device\":\"esp0001\",\"quantity\":\"temperature\",\"topic\":\"sensors/esp0001/temperature\",\"raw\":%s,"
                 "\"reason\":\"%s\",\"ts\":%llu}",
                 cases[i][2], cases[i][1], (unsigned long long)NOW);
        EXPECT_OUT(r, 0, "home/esp0001/temperature/error", want);
        CHECK(r->n_problems == 1 && str_is(r->problems[0].quantity, "temperature"), "problem");
    }
    sb_counters c = sb_bridge_counters(b);
    CHECK(c.garbage == n && c.readings == 0, "garbage %llu", (unsigned long long)c.garbage);
    CHECK(sb_bridge_rule_counters(b, 0).garbage == n, "per rule");
    sb_bridge_free(b);
}

static void range_limits_are_inclusive(void) {
    sb_bridge *b = BRIDGE("[{'topic':'s/{device}','quantity':'q','output':'o/{device}','min':0,'max':100,'round':0}]");
    EXPECT_OUT(run(b, "s/d", "100"), 0, "o/d", reading_json("d", "q", "100", NULL));
    EXPECT_OUT(run(b, "s/d", "0"), 0, "o/d", reading_json("d", "q", "0", NULL));
    CHECK(run(b, "s/d", "100.2")->outputs[0].error, "above");
    CHECK(run(b, "s/d", "-0.1")->outputs[0].error, "below");
    /* 99.6 is in range and rounds to 100: the range applies before rounding. */
    EXPECT_OUT(run(b, "s/d", "99.6"), 0, "o/d", reading_json("d", "q", "100", NULL));
    sb_bridge_free(b);
}

static void kv_payloads(void) {
    sb_bridge *b = BRIDGE("[{'name':'kv','topic':'dht/{device}','parser':'kv','fields':{'t':'temperature','h':'humidity'},"
                          "'output':'home/{device}/{quantity}','quantities':{'temperature':{'unit':'C','max':80},'humidity':{'unit':'%'}}}]");
    const sb_result *r = run(b, "dht/aloys", "t=25.5,h=40.1");
    CHECK(r->n_outputs == 2, "two");
    EXPECT_OUT(r, 0, "home/aloys/temperature", reading_json("aloys", "temperature", "25.5", "C"));
    EXPECT_OUT(r, 1, "home/aloys/humidity", reading_json("aloys", "humidity", "40.1", "%"));
    r = run(b, "dht/aloys", "t=nan,h=40.1");
    CHECK(r->n_outputs == 2 && r->outputs[0].error && !r->outputs[1].error, "error then reading");
    CHECK(str_is(r->outputs[0].topic, "home/aloys/temperature/error"), "error topic");
    CHECK(strstr(cstr(r->outputs[0].payload), "\"raw\":\"t=nan,h=40.1\"") != NULL, "the whole raw payload");
    sb_bridge_free(b);
}

static void csv_and_json_payloads(void) {
    sb_bridge *b = BRIDGE("[{'name':'csv','topic':'csv/{device}','parser':'csv','columns':[null,'temperature','humidity'],"
                          "'output':'home/{device}/{quantity}','round':1},"
                          "{'name':'json','topic':'json/{device}','parser':'json','fields':{'env.t':'temperature','rh':'humidity'},"
                          "'output':'home/{device}/{quantity}'}]");
    const sb_result *c = run(b, "csv/x", "1700000000,21.04,55.55");
    EXPECT_OUT(c, 0, "home/x/temperature", reading_json("x", "temperature", "21", NULL));
    EXPECT_OUT(c, 1, "home/x/humidity", reading_json("x", "humidity", "55.6", NULL));
    const sb_result *j = run(b, "json/x", "{\"env\":{\"t\":21.5},\"rh\":\"40\"}");
    EXPECT_OUT(j, 0, "home/x/temperature", reading_json("x", "temperature", "21.5", NULL));
    EXPECT_OUT(j, 1, "home/x/humidity", reading_json("x", "humidity", "40", NULL));
    sb_bridge_free(b);
}

static void unparsable_json_once_per_error_topic(void) {
    sb_bridge *b = BRIDGE("[{'name':'j','topic':'json/{device}','parser':'json','fields':['temperature','humidity'],'output':'home/{device}/{quantity}'},"
                          "{'name':'shared','topic':'j2/{device}','parser':'json','fields':['temperature','humidity'],"
                          "'output':'home/{device}/{quantity}','error_topic':'errors/{device}'}]");
    const sb_result *r = run(b, "json/x", "{\"temperature\": 2");
    CHECK(r->n_outputs == 2, "two errors");
    CHECK(str_is(r->outputs[0].topic, "home/x/temperature/error") && str_is(r->outputs[1].topic, "home/x/humidity/error"), "topics");
    CHECK(starts(reason_of(r, 0), "unparsable JSON"), "%s", reason_of(r, 0));
    r = run(b, "j2/x", "nope");
    CHECK(r->n_outputs == 1 && str_is(r->outputs[0].topic, "errors/x"), "deduplicated on a shared error topic");
    CHECK(r->n_problems == 2, "both are counted");
    CHECK(sb_bridge_counters(b).garbage == 4, "garbage");
    sb_bridge_free(b);
}

static void global_error_topic(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES, "error_topic", "bridge/errors/{device}");
    CHECK(str_is(run(b, "sensors/d/temperature", "nan")->outputs[0].topic, "bridge/errors/d"), "global error topic");
    sb_bridge_free(b);
}

static void non_utf8_and_oversized(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES, "max_payload", "16");
    const sb_result *r = run_n(b, "sensors/d/temperature", "25\xff", 3);
    CHECK(strcmp(reason_of(r, 0), "payload is not UTF-8") == 0, "%s", reason_of(r, 0));
    CHECK(strstr(cstr(r->outputs[0].payload), "\"raw\":\"25\xEF\xBF\xBD\"") != NULL, "%s", cstr(r->outputs[0].payload));
    char big[1001];
    memset(big, '1', 1000);
    big[1000] = 0;
    r = run(b, "sensors/d/temperature", big);
    CHECK(strcmp(reason_of(r, 0), "payload too large (1000 bytes; max_payload is 16)") == 0, "%s", reason_of(r, 0));
    char want[300] = "\"raw\":\"";
    memset(want + 7, '1', 256);
    strcpy(want + 263, "\",");
    CHECK(strstr(cstr(r->outputs[0].payload), want) != NULL, "raw copy is cut at 256");
    sb_bridge_free(b);
}

static void special_characters_are_escaped(void) {
    sb_bridge *b = BRIDGE("[{'topic':'s/{device}','quantity':'temperature','output':'o/{device}','unit':'\xC2\xB0" "C \\'x\\''}]");
    const sb_result *r = run(b, "s/k\xC3\xBC\"che", "1");
    char want[256];
    snprintf(want, sizeof want, "{\"device\":\"k\xC3\xBC\\\"che\",\"temperature\":1,\"unit\":\"\xC2\xB0" "C \\\"x\\\"\",\"ts\":%llu}",
             (unsigned long long)NOW);
    EXPECT_OUT(r, 0, "o/k\xC3\xBC\"che", want);
    /* Control characters as \u00XX, like JSON.stringify. */
    r = run_n(b, "s/d", "\x01", 1);
    CHECK(strstr(cstr(r->outputs[0].payload), "\"raw\":\"\\u0001\"") != NULL, "%s", cstr(r->outputs[0].payload));
    sb_bridge_free(b);
}

static void topic_quantity_cannot_clash(void) {
    sb_bridge *b = BRIDGE("[{'topic':'s/{device}/{kind}','quantity':'{kind}','output':'o/{device}/{quantity}'}]");
    const sb_result *r = run(b, "s/d/ts", "1");
    CHECK(r->outputs[0].error, "error");
    CHECK(strstr(reason_of(r, 0), "`ts` cannot be a quantity name") != NULL, "%s", reason_of(r, 0));
    sb_bridge_free(b);
}

static void at_most_64_outputs(void) {
    char rules[4096] = "[{'topic':'c/{device}','parser':'csv','output':'o/{device}/{quantity}','columns':[";
    char payload[1024] = "";
    for (int i = 0; i < 64; i++) {
        char t[32];
        snprintf(t, sizeof t, "%s'q%d'", i ? "," : "", i);
        strcat(rules, t);
        snprintf(t, sizeof t, "%s%d", i ? "," : "", i);
        strcat(payload, t);
    }
    strcat(rules, "]}]");
    sb_bridge *b = BRIDGE(rules);
    const sb_result *r = run(b, "c/d", payload);
    CHECK(r->n_outputs == 64, "%zu", r->n_outputs);
    EXPECT_OUT(r, 63, "o/d/q63", reading_json("d", "q63", "63", NULL));
    sb_bridge_free(b);
}

static void config_errors_name_the_rule_and_the_key(void) {
    static const char *RULE = "'name':'dht','topic':'sensors/{device}/t','quantity':'temperature','output':'home/{device}/t'";
    static const char *RULE_NO_Q = "'name':'dht','topic':'sensors/{device}/t','output':'home/{device}/t'";
    struct {
        const char *base;
        const char *extra;
        const char *want; /* a prefix, or the whole message when it ends in `$` */
    } bad[] = {
        {RULE, ",'parser':'xml'", "rules[0] (dht): key `parser`: unknown parser `xml` (use plain, kv, csv or json)$"},
        {"'name':'dht','topic':'sensors/+/t','quantity':'temperature','output':'home/{device}/t'", "", "rules[0] (dht): key `topic`: MQTT wildcards"},
        {"'name':'dht','topic':'sensors/{dev}/t','quantity':'temperature','output':'home/{device}/t'", "", "rules[0] (dht): key `topic`: the pattern must capture the device"},
        {"'name':'dht','quantity':'temperature','output':'home/{device}/t'", "", "rules[0] (dht): key `topic`: is required"},
        {"'name':'dht','topic':'sensors/{device}/t','quantity':'temperature'", "", "rules[0] (dht): key `output`: is required"},
        {"'name':'dht','topic':'sensors/{device}/t','quantity':'temperature','output':'home/{room}'", "", "rules[0] (dht): key `output`: `{room}` is not known here"},
        {RULE_NO_Q, "", "rules[0] (dht): key `quantity`: is required with parser plain"},
        {"'name':'dht','topic':'sensors/{device}/t','quantity':'ts','output':'home/{device}/t'", "", "rules[0] (dht): key `quantity`: `ts` cannot be a quantity name"},
        {RULE, ",'round':1.5", "rules[0] (dht): key `round`: must be a whole number"},
        {RULE, ",'round':11", "rules[0] (dht): key `round`"},
        {RULE, ",'min':'cold'", "rules[0] (dht): key `min`: must be a number"},
        {RULE, ",'min':10,'max':0", "rules[0] (dht): key `max`: is below min"},
        {RULE, ",'replace':'yes'", "rules[0] (dht): key `replace`: must be true or false"},
        {RULE, ",'unit':5", "rules[0] (dht): key `unit`: must be a string"},
        {RULE, ",'fields':['a']", "rules[0] (dht): key `fields`: only applies to the kv and json parsers"},
        {RULE, ",'separator':';'", "rules[0] (dht): key `separator`: only applies"},
        {RULE, ",'parse':'kv'", "rules[0] (dht): unknown key `parse`"},
        {RULE, ",'error_topic':'err/{nope}'", "rules[0] (dht): key `error_topic`: `{nope}` is not known"},
        {RULE, ",'quantities':{'humidity':{'unit':'%'}}", "rules[0] (dht): key `quantities.humidity`: `humidity` is not one of this rule's quantities"},
        {RULE, ",'quantities':{'temperature':{'units':'C'}}", "rules[0] (dht): key `quantities.temperature`: unknown key `units`"},
        {RULE_NO_Q, ",'parser':'kv'", "rules[0] (dht): key `fields`: is required with parser kv"},
        {RULE_NO_Q, ",'parser':'csv'", "rules[0] (dht): key `columns`: is required with parser csv"},
        {RULE_NO_Q, ",'parser':'kv','fields':{'t':'x','h':'x'}", "rules[0] (dht): key `fields`: names a quantity twice"},
        {RULE_NO_Q, ",'parser':'kv','fields':{'t':'a','h':'b'}", "rules[0] (dht): key `output`: the parser yields several quantities"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char rules[1024];
        snprintf(rules, sizeof rules, "[{%s%s}]", bad[i].base, bad[i].extra);
        const char *got = REFUSAL(rules);
        size_t wl = strlen(bad[i].want);
        if (bad[i].want[wl - 1] == '$') CHECK(strlen(got) == wl - 1 && strncmp(got, bad[i].want, wl - 1) == 0, "%s\n   got %s", rules, got);
        else CHECK(starts(got, bad[i].want), "%s\n   got %s", rules, got);
    }
    /* 65 columns. */
    char rules[2048] = "[{'name':'dht','topic':'sensors/{device}/t','parser':'csv','output':'o/{quantity}','columns':[";
    for (int i = 0; i < 65; i++) {
        char t[16];
        snprintf(t, sizeof t, "%s'c%d'", i ? "," : "", i);
        strcat(rules, t);
    }
    strcat(rules, "]}]");
    CHECK(starts(REFUSAL(rules), "rules[0] (dht): key `columns`: names 65 quantities; at most 64"), "%s", last_error);
    CHECK(starts(REFUSAL("['just a string']"), "rules[0]: each rule must be a map"), "%s", last_error);
    /* The second rule is named by its position when it has no name. */
    CHECK(starts(REFUSAL("[{'name':'dht','topic':'sensors/{device}/t','quantity':'temperature','output':'home/{device}/t'},"
                         "{'topic':'sensors/{device}/t','quantity':'temperature','output':'home/{device}/t','parser':'xml'}]"),
                 "rules[1]: key `parser`"),
          "%s", last_error);
    CHECK(starts(REFUSAL("[{'name':'dht','topic':'sensors/{device}/t','quantity':'temperature','output':'home/{device}/t'},"
                         "{'name':'dht','topic':'sensors/{device}/t','quantity':'temperature','output':'home/{device}/t'}]"),
                 "rules: the name `dht` is used twice"),
          "%s", last_error);
}

static void config_errors_outside_the_rules(void) {
    CHECK(strstr(REFUSAL(NULL), "config key `rules` is required") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL("["), "config key `rules` is not a list of rules") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL("[]"), "must be a non-empty list") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL("{'a':1}"), "must be a non-empty list") != NULL, "%s", last_error);
    const char *ok = "[{'topic':'s/{device}','quantity':'q','output':'o'}]";
    CHECK(strstr(REFUSAL(ok, "rule", "x"), "config: unknown key `rule`") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL(ok, "log_errors", "loud"), "config key `log_errors`") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL(ok, "stats_interval", "often"), "config key `stats_interval`") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL(ok, "max_payload", "0"), "config key `max_payload`") != NULL, "%s", last_error);
    sb_bridge *c = BRIDGE(ok, "stats_interval", "5m", "log_errors", "off", "max_payload", "64");
    CHECK(sb_bridge_stats_millis(c) == 300000 && sb_bridge_log_level(c) == SB_LOG_OFF, "settings");
    sb_bridge_free(c);
    sb_bridge *d = BRIDGE(ok);
    CHECK(sb_bridge_stats_millis(d) == 60000 && sb_bridge_log_level(d) == SB_LOG_WARN, "defaults");
    /* max_payload defaults to 1024 and replace to false. */
    char p1024[1025], p1025[1026];
    memset(p1024, ' ', 1023); /* a number with spaces around it */
    p1024[1023] = '1';
    p1024[1024] = 0;
    memset(p1025, '1', 1025);
    p1025[1025] = 0;
    CHECK(!run(d, "s/x", p1024)->outputs[0].error, "1024 bytes are fine");
    CHECK(run(d, "s/x", p1025)->outputs[0].error, "1025 bytes are too many");
    CHECK(!run(d, "s/x", "1")->replace, "replace defaults to false");
    sb_bridge_free(d);
}

static void stats_line(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES);
    run(b, "sensors/a/temperature", "20");
    run(b, "sensors/a/temperature", "nan");
    run(b, "sensors_a/dht", "20");
    run(b, "x", "1");
    const char *want = "sensor-bridge stats (this instance): 4 messages, 3 matched, 2 readings out, 1 garbage, 1 not matched; "
                       "split: 2 matched, 1 readings, 1 garbage; legacy: 1 matched, 1 readings, 0 garbage";
    CHECK(str_is(sb_stats_line(b), want), "%s", cstr(sb_stats_line(b)));
    CHECK(str_is(sb_ready_line(b), "sensor-bridge ready: 2 rule(s): split (sensors/{device}/{kind:temperature|humidity}, plain); "
                                   "legacy (sensors_{device}/dht, plain, replace)"),
          "%s", cstr(sb_ready_line(b)));
    const sb_result *r = run(b, "sensors/esp0002/humidity", "-999.9");
    CHECK(str_is(sb_problem_line(b, r, 0, S("sensors/esp0002/humidity")),
                 "rule split: garbage humidity from device esp0002 on sensors/esp0002/humidity: out of range: -999.9 is below min 0 "
                 "(raw \"-999.9\")"),
          "%s", cstr(sb_problem_line(b, r, 0, S("sensors/esp0002/humidity"))));
    sb_bridge_free(b);
}

static void readme_examples(void) {
    sb_bridge *b = BRIDGE(
        "[{'topic':'dht/{device}','parser':'kv','fields':{'t':'temperature','h':'humidity'},'output':'home/{device}/{quantity}',"
        "'quantities':{'temperature':{'unit':'C','min':-40,'max':80},'humidity':{'unit':'%','min':0,'max':100}}},"
        "{'topic':'{site}/station/{device}/csv','parser':'csv','columns':[null,'temperature','humidity','pressure'],"
        "'output':'weather/{site}/{device}/{quantity}','error_topic':'weather/{site}/errors','quantities':{'pressure':{'unit':'hPa','round':0}}},"
        "{'topic':'tele/{device}/SENSOR','parser':'json','fields':{'AM2301.Temperature':'temperature','AM2301.Humidity':'humidity'},"
        "'output':'home/{device}/{quantity}','round':1,'replace':true}]");
    const sb_result *kv = run(b, "dht/aloys", "t=nan,h=40.1");
    CHECK(kv->n_outputs == 2 && str_is(kv->outputs[0].topic, "home/aloys/temperature/error"), "kv error");
    CHECK(strcmp(reason_of(kv, 0), "not a number: \"nan\"") == 0, "%s", reason_of(kv, 0));
    EXPECT_OUT(kv, 1, "home/aloys/humidity", reading_json("aloys", "humidity", "40.1", "%"));
    const sb_result *csv = run(b, "lab/station/ws1/csv", "1700000000,21.5,nan,1013.4");
    CHECK(csv->n_outputs == 3, "three");
    EXPECT_OUT(csv, 0, "weather/lab/ws1/temperature", reading_json("ws1", "temperature", "21.5", NULL));
    CHECK(str_is(csv->outputs[1].topic, "weather/lab/errors"), "csv error topic");
    EXPECT_OUT(csv, 2, "weather/lab/ws1/pressure", reading_json("ws1", "pressure", "1013", "hPa"));
    const sb_result *broken = run(b, "lab/station/ws1/csv", "");
    CHECK(broken->n_outputs == 1 && str_is(broken->outputs[0].topic, "weather/lab/errors"), "one report for a payload-wide failure");
    CHECK(broken->n_problems == 3, "three problems");
    const sb_result *t = run(b, "tele/plug1/SENSOR", "{\"Time\":\"2026-11-25T20:00:00\",\"AM2301\":{\"Temperature\":21.46,\"Humidity\":40}}");
    CHECK(t->replace, "replace");
    EXPECT_OUT(t, 0, "home/plug1/temperature", reading_json("plug1", "temperature", "21.5", NULL));
    EXPECT_OUT(t, 1, "home/plug1/humidity", reading_json("plug1", "humidity", "40", NULL));
    sb_bridge_free(b);
}

static void readme_error_messages(void) {
    CHECK(strcmp(REFUSAL("[{'name':'split','topic':'sensors/+/{kind}','quantity':'{kind}','output':'home/{device}/{quantity}'}]"),
                 "rules[0] (split): key `topic`: MQTT wildcards + and # are not allowed: name a level with {name} instead") == 0,
          "%s", last_error);
    CHECK(strcmp(REFUSAL("[{'name':'split','topic':'sensors/{device}/{kind:temperature|humidity}','quantity':'{kind}','output':'home/{room}'}]"),
                 "rules[0] (split): key `output`: `{room}` is not known here (known: {device}, {kind}, {quantity})") == 0,
          "%s", last_error);
    /* The message tests/sensor_bridge.rs expects from the broker for the example's legacy rule. */
    CHECK(strcmp(REFUSAL("[{'name':'split','topic':'sensors/{device}/{kind:temperature|humidity}','quantity':'{kind}','output':'home/{device}/{quantity}'},"
                         "{'name':'legacy','topic':'sensors_{device}/dht','quantity':'temperature','output':'home/{device}/legacy/temperature','round':'lots'}]"),
                 "rules[1] (legacy): key `round`: must be a number") == 0,
          "%s", last_error);
}

/* ---------------------------------------------------------------------------------------- */
/* patterns.test.js (through rules whose output shows the captures) */

static void patterns_capture_levels(void) {
    sb_bridge *b = BRIDGE("[{'topic':'sensors/{device}/{kind}','quantity':'q','output':'o/{device}/{kind}'}]");
    EXPECT_OUT(run(b, "sensors/aloys/temperature", "1"), 0, "o/aloys/temperature", reading_json("aloys", "q", "1", NULL));
    CHECK(run(b, "sensors/aloys", "1") == NULL, "too short");
    CHECK(run(b, "sensors/aloys/temperature/x", "1") == NULL, "a placeholder never spans a /");
    CHECK(run(b, "sensors//temperature", "1") == NULL, "a placeholder captures at least one character");
    CHECK(run(b, "xsensors/aloys/t", "1") == NULL, "anchored at the start");
    sb_bridge_free(b);
}

static void patterns_part_of_a_level(void) {
    sb_bridge *b = BRIDGE("[{'topic':'sensors_{device}/dht','quantity':'q','output':'o/{device}'},"
                          "{'topic':'{site}-{device}/reading','quantity':'q','output':'p/{site}/{device}'}]");
    EXPECT_OUT(run(b, "sensors_aloys/dht", "1"), 0, "o/aloys", reading_json("aloys", "q", "1", NULL));
    EXPECT_OUT(run(b, "sensors_esp_0001/dht", "1"), 0, "o/esp_0001", reading_json("esp_0001", "q", "1", NULL));
    CHECK(run(b, "sensors_/dht", "1") == NULL, "empty");
    CHECK(run(b, "sensors_aloys/dht2", "1") == NULL, "anchored at the end");
    CHECK(run(b, "sensors/aloys/dht", "1") == NULL, "other");
    EXPECT_OUT(run(b, "lab-a-b/reading", "1"), 0, "p/lab/a-b", reading_json("a-b", "q", "1", NULL)); /* the first separator splits */
    sb_bridge_free(b);
}

static void patterns_alternatives(void) {
    sb_bridge *b = BRIDGE("[{'topic':'sensors/{device}/{kind:temperature|humidity}','quantity':'q','output':'o/{device}/{kind}'},"
                          "{'topic':'a.b/{device}/{k:x.y|(z)}','quantity':'q','output':'p/{device}/{k}'}]");
    EXPECT_OUT(run(b, "sensors/a/humidity", "1"), 0, "o/a/humidity", reading_json("a", "q", "1", NULL));
    CHECK(run(b, "sensors/a/status", "1") == NULL, "not listed");
    CHECK(run(b, "sensors/a/temperatureX", "1") == NULL, "whole alternative");
    EXPECT_OUT(run(b, "a.b/d/x.y", "1"), 0, "p/d/x.y", reading_json("d", "q", "1", NULL));
    CHECK(run(b, "aXb/d/x.y", "1") == NULL, "literal dot");
    CHECK(run(b, "a.b/d/xZy", "1") == NULL, "literal dot in an alternative");
    EXPECT_OUT(run(b, "a.b/d/(z)", "1"), 0, "p/d/(z)", reading_json("d", "q", "1", NULL));
    sb_bridge_free(b);
}

static void patterns_backtracking_stays_cheap(void) {
    /* A pattern that backtracks a lot on a long topic that almost matches. */
    sb_bridge *b = BRIDGE("[{'topic':'{a}-{b}-{c}-{device}x','quantity':'q','output':'o/{device}'}]");
    char topic[4001];
    for (int i = 0; i < 4000; i++) topic[i] = i % 2 ? '-' : 'a';
    topic[4000] = 0;
    CHECK(run(b, topic, "1") == NULL, "no match");
    topic[3999] = 'x';
    const sb_result *r = run(b, topic, "1");
    CHECK(r != NULL && r->device.len == 3993, "device %zu", r ? r->device.len : 0);
    sb_bridge_free(b);
}

static void bad_patterns(void) {
    struct {
        const char *topic;
        const char *reason;
    } bad[] = {
        {"", "non-empty"},
        {"sensors/+/dht", "wildcards"},
        {"sensors/#", "wildcards"},
        {"sensors/{device", "not closed"},
        {"sensors/device}", "without a matching"},
        {"sensors/{}", "placeholder name"},
        {"sensors/{1x}", "placeholder name"},
        {"sensors/{a b}", "placeholder name"},
        {"{device}/{device}", "appears twice"},
        {"{a}{device}", "directly follows"},
        {"s/{k:a||b}/{device}", "alternative"},
        {"s/{k:a/b}/{device}", "alternative"},
        {"s/{x{y}}/{device}", "nested"},
        {"s/{output}/{device}", "`{output}` cannot be captured"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char rules[256];
        snprintf(rules, sizeof rules, "[{'topic':'%s','quantity':'q','output':'o'}]", bad[i].topic);
        const char *got = REFUSAL(rules);
        CHECK(starts(got, "rules[0]: key `topic`: ") && strstr(got, bad[i].reason) != NULL, "%s: %s", bad[i].topic, got);
    }
}

static void templates(void) {
    sb_bridge *b = BRIDGE("[{'topic':'s/{device}','quantity':'q','output':'home/x'}]");
    CHECK(str_is(run(b, "s/d", "1")->outputs[0].topic, "home/x"), "a template without placeholders");
    sb_bridge_free(b);
    CHECK(strstr(REFUSAL("[{'topic':'s/{device}','quantity':'q','output':'home/{room}'}]"), "`{room}` is not known here") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL("[{'topic':'s/{device}','quantity':'q','output':'home/+/t'}]"), "wildcards") != NULL, "%s", last_error);
    CHECK(strstr(REFUSAL("[{'topic':'s/{device}','quantity':'q','output':'home/{device:a|b}'}]"), "only allowed in the topic pattern") != NULL,
          "%s", last_error);
    CHECK(strstr(REFUSAL("[{'topic':'s/{device}','quantity':'q','output':''}]"), "key `output`: must be a non-empty topic template") != NULL,
          "%s", last_error);
}

static const char *num_text(sb_num *n) {
    static char out[64];
    out[sb_num_format(n, out)] = 0;
    return out;
}

static void numbers(void) {
    sb_arena a = {0};
    struct {
        const char *text;
        const char *value;
        int decimals;
    } good[] = {
        {"25.5", "25.5", 1}, {"25", "25", 0},   {"25.50", "25.5", 2}, {"-3.0", "-3", 1},       {"+4", "4", 0},
        {".5", "0.5", 1},    {"5.", "5", 0},    {"1e2", "100", -1},   {" 21.5\n", "21.5", 1}, {"0", "0", 0},
        {"-0", "0", 0},      {"0.000001", "0.000001", 6}, {"1e-7", "1e-7", -1}, {"1e21", "1e+21", -1},
        {"123456789012345678901", "123456789012345680000", 0}, {"0.1234567890123456789", "0.12345678901234568", 19},
        {"\xC2\xA0" "7\xE3\x80\x80", "7", 0},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        sb_num n;
        int d = -2;
        const char *err = sb_parse_number(&a, S(good[i].text), &n, &d);
        CHECK(err == NULL, "%s: %s", good[i].text, err);
        if (err == NULL) {
            CHECK(strcmp(num_text(&n), good[i].value) == 0 && d == good[i].decimals, "%s → %s (%d)", good[i].text, num_text(&n), d);
        }
    }
    struct {
        const char *text;
        const char *reason;
    } bad[] = {
        {"", "empty"},           {"  ", "empty"},        {"nan", "not a number"},     {"NaN", "not a number"},
        {"inf", "not a number"}, {"Infinity", "not a number"}, {"25,5", "not a number"}, {"hot", "not a number"},
        {"0x10", "not a number"}, {"1e999", "not a finite number"}, {"ERR", "not a number"}, {"25.5C", "not a number"},
        {"--1", "not a number"}, {".", "not a number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sb_num n;
        int d;
        const char *err = sb_parse_number(&a, S(bad[i].text), &n, &d);
        CHECK(err != NULL && strstr(err, bad[i].reason) != NULL, "%s: %s", bad[i].text, err ? err : "(accepted)");
    }
    /* The quoted text is cut at 40 characters. */
    const char *err = NULL;
    sb_num n;
    int d;
    err = sb_parse_number(&a, S("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), &n, &d);
    CHECK(err != NULL && strcmp(err, "not a number: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\xE2\x80\xA6\"") == 0, "%s", err);
    sb_arena_free(&a);
}

static const char *rounded(const char *text, int decimals) {
    sb_arena a = {0};
    sb_num n, r;
    int d;
    if (sb_parse_number(&a, S(text), &n, &d) != NULL) return "(not a number)";
    sb_round_to(&n, decimals, &r);
    sb_arena_free(&a);
    return num_text(&r);
}

static void rounding(void) {
    CHECK(strcmp(rounded("25.45", 1), "25.5") == 0, "%s", rounded("25.45", 1));
    CHECK(strcmp(rounded("1.005", 2), "1.01") == 0, "%s", rounded("1.005", 2));
    CHECK(strcmp(rounded("41.5", 0), "42") == 0, "41.5");
    CHECK(strcmp(rounded("40.5", 0), "41") == 0, "40.5");
    CHECK(strcmp(rounded("-2.5", 0), "-3") == 0, "-2.5");
    CHECK(strcmp(rounded("-0.04", 1), "0") == 0, "no negative zero: %s", rounded("-0.04", 1));
    CHECK(strcmp(rounded("25.5", -1), "25.5") == 0, "none");
    CHECK(strcmp(rounded("1e-7", 3), "0") == 0, "tiny");
    CHECK(strcmp(rounded("123456789012345678", 2), "123456789012345680") == 0, "huge");
    CHECK(strcmp(rounded("21.456", 2), "21.46") == 0, "21.456");
    CHECK(strcmp(rounded("9.96", 1), "10") == 0, "carry");
    CHECK(strcmp(rounded("0.05", 1), "0.1") == 0, "0.05");
    CHECK(strcmp(rounded("0.3000000000000000444", 2), "0.3") == 0, "17 digits: %s", rounded("0.3000000000000000444", 2));
    CHECK(strcmp(rounded("123456.75", 10), "123456.75") == 0, "many decimals: %s", rounded("123456.75", 10));
    CHECK(strcmp(rounded("1.5e-7", 10), "1.5e-7") == 0, "tiny with decimals: %s", rounded("1.5e-7", 10));
    /* JSON numbers have no decimals to compare, so they are always rounded. */
    sb_bridge *b = BRIDGE("[{'topic':'j/{device}','parser':'json','fields':['t'],'output':'o/{device}','round':2}]");
    EXPECT_OUT(run(b, "j/d", "{\"t\":1.005}"), 0, "o/d", reading_json("d", "t", "1.01", NULL));
    EXPECT_OUT(run(b, "j/d", "{\"t\":-0.001}"), 0, "o/d", reading_json("d", "t", "0", NULL));
    const sb_result *r = run(b, "j/d", "{\"t\":1e999}");
    CHECK(r->outputs[0].error && strcmp(reason_of(r, 0), "not a finite number") == 0, "%s", reason_of(r, 0));
    sb_bridge_free(b);
}

static void durations(void) {
    CHECK(sb_parse_seconds(S("60")) == 60, "60");
    CHECK(sb_parse_seconds(S("60s")) == 60, "60s");
    CHECK(sb_parse_seconds(S("5m")) == 300, "5m");
    CHECK(sb_parse_seconds(S("500ms")) == 0.5, "500ms");
    CHECK(sb_parse_seconds(S("0")) == 0, "0");
    CHECK(sb_parse_seconds(S(" 1.5 h ")) == 5400, "1.5 h");
    CHECK(sb_parse_seconds(S("soon")) < 0, "soon");
    CHECK(sb_parse_seconds(S("-1")) < 0, "-1");
}

static void utf8(void) {
    sb_arena a = {0};
    const char *s = "K\xC3\xBC" "che 25\xC2\xB0" "C \xF0\x9F\x8C\xA1";
    CHECK(sb_utf8_valid((const uint8_t *)s, strlen(s)), "valid");
    CHECK(str_is(sb_utf8_lossy(&a, (const uint8_t *)s, strlen(s)), s), "round trip");
    CHECK(!sb_utf8_valid((const uint8_t *)"2\xff" "5", 3), "invalid");
    CHECK(str_is(sb_utf8_lossy(&a, (const uint8_t *)"2\xff" "5", 3), "2\xEF\xBF\xBD" "5"), "replaced");
    CHECK(!sb_utf8_valid((const uint8_t *)"\xc0\x80", 2), "overlong encoding");
    CHECK(!sb_utf8_valid((const uint8_t *)"\xe2\x82", 2), "truncated sequence");
    CHECK(!sb_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3), "surrogate");
    CHECK(str_is(sb_utf8_lossy(&a, (const uint8_t *)"\xe2\x82", 2), "\xEF\xBF\xBD\xEF\xBF\xBD"), "one U+FFFD per bad byte");
    /* JSON.stringify of lone surrogates (from a JSON payload's \ud83c) and control characters. */
    CHECK(str_is(sb_json_quote(&a, S("\xED\xA0\xBC")), "\"\\ud83c\""), "%s", cstr(sb_json_quote(&a, S("\xED\xA0\xBC"))));
    CHECK(str_is(sb_json_quote(&a, S("a\"b\\c\n\x7f")), "\"a\\\"b\\\\c\\n\x7f\""), "escapes");
    sb_arena_free(&a);
}

/* ---------------------------------------------------------------------------------------- */
/* parsers.test.js (through rules; the readings' texts show in outputs and error reasons) */

static void kv_parser(void) {
    sb_bridge *b = BRIDGE("[{'topic':'kv/{device}','parser':'kv','fields':{'t':'temperature','h':'humidity'},'output':'o/{device}/{quantity}'},"
                          "{'topic':'kv2/{device}','parser':'kv','separator':';','fields':{'t':'temperature','h':'humidity'},'output':'o/{device}/{quantity}'}]");
    const sb_result *r = run(b, "kv/d", " h: 40.1 , x=1,, t=25.5");
    EXPECT_OUT(r, 0, "o/d/temperature", reading_json("d", "temperature", "25.5", NULL));
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "40.1", NULL));
    r = run(b, "kv2/d", "t=25.5;h=40.1");
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "40.1", NULL));
    r = run(b, "kv/d", "t=25.5");
    CHECK(!r->outputs[0].error && strcmp(reason_of(r, 1), "missing key `h`") == 0, "%s", reason_of(r, 1));
    r = run(b, "kv/d", "t=1,t=2,h=3");
    CHECK(strcmp(reason_of(r, 0), "key `t` appears more than once") == 0, "%s", reason_of(r, 0));
    r = run(b, "kv/d", "");
    CHECK(r->n_problems == 2 && strcmp(cstr(r->problems[0].reason), "empty payload") == 0 &&
              strcmp(cstr(r->problems[1].reason), "empty payload") == 0,
          "empty");
    r = run(b, "kv/d", "t=nan,h=");
    CHECK(strcmp(reason_of(r, 0), "not a number: \"nan\"") == 0 && strcmp(reason_of(r, 1), "empty value") == 0, "garbage values");
    r = run(b, "kv/d", "garbage");
    CHECK(strcmp(reason_of(r, 0), "missing key `t`") == 0 && strcmp(reason_of(r, 1), "missing key `h`") == 0, "no keys");
    sb_bridge_free(b);
}

static void csv_parser(void) {
    sb_bridge *b = BRIDGE("[{'topic':'c/{device}','parser':'csv','columns':['temperature','humidity'],'output':'o/{device}/{quantity}'},"
                          "{'topic':'c2/{device}','parser':'csv','columns':[null,'temperature','humidity'],'output':'o/{device}/{quantity}'},"
                          "{'topic':'c3/{device}','parser':'csv','separator':';','columns':['temperature','humidity'],'output':'o/{device}/{quantity}'},"
                          "{'topic':'c4/{device}','parser':'csv','columns':['temperature',''],'output':'o/{device}/{quantity}'}]");
    const sb_result *r = run(b, "c/d", "25.5,40.1");
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "40.1", NULL));
    r = run(b, "c2/d", "1700000000,25.5,40.1,extra");
    EXPECT_OUT(r, 0, "o/d/temperature", reading_json("d", "temperature", "25.5", NULL));
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "40.1", NULL));
    r = run(b, "c/d", "25.5");
    CHECK(strcmp(reason_of(r, 1), "missing column 2 (the payload has 1)") == 0, "%s", reason_of(r, 1));
    r = run(b, "c3/d", "25.5;40.1");
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "40.1", NULL));
    r = run(b, "c4/d", "");
    CHECK(r->n_outputs == 1 && strcmp(reason_of(r, 0), "empty payload") == 0, "%s", reason_of(r, 0));
    /* `25,5` with the default separator is two columns. */
    r = run(b, "c/d", "25,5");
    EXPECT_OUT(r, 0, "o/d/temperature", reading_json("d", "temperature", "25", NULL));
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "5", NULL));
    sb_bridge_free(b);
}

static void json_parser(void) {
    sb_bridge *b = BRIDGE("[{'topic':'j/{device}','parser':'json','fields':{'temp':'temperature','env.hum':'humidity'},'output':'o/{device}/{quantity}'},"
                          "{'topic':'k/{device}','parser':'json','fields':{'constructor':'temperature'},'output':'o/{device}/{quantity}'}]");
    const sb_result *r = run(b, "j/d", "{\"temp\":25.5,\"env\":{\"hum\":40.1}}");
    EXPECT_OUT(r, 0, "o/d/temperature", reading_json("d", "temperature", "25.5", NULL));
    EXPECT_OUT(r, 1, "o/d/humidity", reading_json("d", "humidity", "40.1", NULL));
    r = run(b, "j/d", "{\"temp\":\"25.5\",\"env\":{}}");
    EXPECT_OUT(r, 0, "o/d/temperature", reading_json("d", "temperature", "25.5", NULL));
    CHECK(strcmp(reason_of(r, 1), "missing field `env.hum`") == 0, "%s", reason_of(r, 1));
    /* The last of repeated keys wins, as in JSON.parse; escapes are decoded. */
    r = run(b, "j/d", "{\"temp\":1,\"t\\u0065mp\":2,\"env\":{\"hum\":3}}");
    EXPECT_OUT(r, 0, "o/d/temperature", reading_json("d", "temperature", "2", NULL));
    struct {
        const char *payload;
        const char *reason;
    } bad[] = {
        {"{\"temp\":", "unparsable JSON: "},
        {"nan", "unparsable JSON: "},
        {"{\"temp\":1,}", "unparsable JSON: "},
        {"{\"temp\":01}", "unparsable JSON: "},
        {"{'temp':1}", "unparsable JSON: "},
        {"{\"temp\":1} x", "unparsable JSON: "},
        {"", "empty payload"},
        {"25.5", "JSON payload is not an object"},
        {"[1]", "JSON payload is not an object"},
        {"{\"temp\":null}", "field `temp` is null, not a number"},
        {"{\"temp\":true}", "field `temp` is a boolean, not a number"},
        {"{\"temp\":[1]}", "field `temp` is a list, not a number"},
        {"{\"temp\":{\"c\":1}}", "field `temp` is an object, not a number"},
        {"{\"temp\":1e999}", "not a finite number"},
        {"{\"temp\":\"\\ud83c\"}", "not a number: \\\"\\\\ud83c\\\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = run(b, "j/d", bad[i].payload);
        const char *want = bad[i].reason;
        CHECK(r->outputs[0].error && (starts(reason_of(r, 0), want) || strstr(cstr(r->outputs[0].payload), want) != NULL), "%s: %s",
              bad[i].payload, cstr(r->outputs[0].payload));
    }
    /* Inherited properties are not fields. */
    r = run(b, "k/d", "{}");
    CHECK(strcmp(reason_of(r, 0), "missing field `constructor`") == 0, "%s", reason_of(r, 0));
    /* Every field of an unparsable payload gets the same reason (one report on a shared topic). */
    r = run(b, "j/d", "oops");
    CHECK(r->n_problems == 2 && strcmp(cstr(r->problems[0].reason), cstr(r->problems[1].reason)) == 0, "same reason");
    sb_bridge_free(b);
}

/* The topic cache (bridge.c) must not change any answer: a topic seen before, a topic whose
 * slot another topic took over, and a topic no rule matches. */
static void topic_cache(void) {
    sb_bridge *b = BRIDGE(FIRMWARE_RULES);
    char first[512];
    const sb_result *r = run(b, "sensors/aloys/temperature", "25.46");
    snprintf(first, sizeof first, "%s|%s", cstr(r->outputs[0].topic), cstr(r->outputs[0].payload));
    for (int i = 0; i < 3; i++) {
        r = run(b, "sensors/aloys/temperature", "25.46");
        char again[512];
        snprintf(again, sizeof again, "%s|%s", cstr(r->outputs[0].topic), cstr(r->outputs[0].payload));
        CHECK(strcmp(first, again) == 0, "hit %d: %s vs %s", i, again, first);
    }
    /* Garbage and payload-wide failures on a cached topic. */
    r = run(b, "sensors/aloys/temperature", "nan");
    CHECK(r->outputs[0].error && strcmp(reason_of(r, 0), "not a number: \"nan\"") == 0, "%s", reason_of(r, 0));
    r = run_n(b, "sensors/aloys/temperature", "\xff", 1);
    CHECK(strcmp(reason_of(r, 0), "payload is not UTF-8") == 0, "%s", reason_of(r, 0));
    /* 5000 devices: more topics than slots, so slots are taken over; every answer stays right. */
    int wrong = 0;
    char first_wrong[256] = "";
    for (int round = 0; round < 2; round++) {
        for (int d = 0; d < 5000; d++) {
            char topic[64], device[16], want[160];
            snprintf(device, sizeof device, "esp%04d", d);
            snprintf(topic, sizeof topic, d % 3 == 2 ? "sensors_%s/dht" : d % 3 ? "sensors/%s/humidity" : "sensors/%s/temperature", device);
            r = run(b, topic, "41.46");
            const char *q = d % 3 == 1 ? "humidity" : "temperature";
            snprintf(want, sizeof want, "home/%s/%s%s", device, d % 3 == 2 ? "legacy/" : "", q);
            bool ok = r != NULL && r->n_outputs == 1 && str_is(r->outputs[0].topic, want) &&
                      str_is(r->outputs[0].payload, reading_json(device, q, d % 3 == 1 ? "41" : "41.5", d % 3 == 1 ? "%" : "C")) &&
                      r->replace == (d % 3 == 2);
            snprintf(topic, sizeof topic, "sensors/%s/status", device);
            ok = ok && run(b, topic, "online") == NULL;
            if (!ok && wrong++ == 0) snprintf(first_wrong, sizeof first_wrong, "round %d, device %s", round, device);
        }
    }
    CHECK(wrong == 0, "%d wrong answers, first: %s", wrong, first_wrong);
    sb_counters c = sb_bridge_counters(b);
    CHECK(c.unmatched == 10000 && c.matched == 10000 + 6, "counters: %llu unmatched, %llu matched", (unsigned long long)c.unmatched,
          (unsigned long long)c.matched);
    sb_bridge_free(b);
}

int main(void) {
    valid_plain_reading();
    first_rule_wins();
    status_topics_do_not_match();
    replace_drops_the_raw_message();
    garbage_goes_to_the_error_topic();
    range_limits_are_inclusive();
    kv_payloads();
    csv_and_json_payloads();
    unparsable_json_once_per_error_topic();
    global_error_topic();
    non_utf8_and_oversized();
    special_characters_are_escaped();
    topic_quantity_cannot_clash();
    at_most_64_outputs();
    config_errors_name_the_rule_and_the_key();
    config_errors_outside_the_rules();
    stats_line();
    readme_examples();
    readme_error_messages();
    patterns_capture_levels();
    patterns_part_of_a_level();
    patterns_alternatives();
    patterns_backtracking_stays_cheap();
    bad_patterns();
    templates();
    numbers();
    rounding();
    durations();
    utf8();
    kv_parser();
    csv_parser();
    json_parser();
    topic_cache();
    if (failures > 0) {
        fprintf(stderr, "test_bridge: %d of %d checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_bridge: all %d checks passed\n", checks);
    return 0;
}
