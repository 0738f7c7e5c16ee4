/*
 * Native tests of the presence plugin's pure logic (presence_logic.c): JSON escaping, the
 * online/offline payloads, topic building, the `exclude` list and config checks.
 * Built and run by test.sh with the host's clang-19; exits non-zero on the first failure.
 */
#include "presence_logic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

/* Asserts that `b` holds exactly `want` (`want_len` bytes) and frees it. */
static void expect_buf(pbuf_t *b, const char *want, size_t want_len, int line) {
    checks++;
    if (b->failed || b->len != want_len || memcmp(b->ptr, want, want_len) != 0) {
        fprintf(stderr, "%s:%d: got [%.*s] (%zu bytes), want [%.*s] (%zu bytes)\n", __FILE__, line,
                (int)b->len, b->ptr ? b->ptr : "", b->len, (int)want_len, want, want_len);
        exit(1);
    }
    pbuf_free(b);
}
#define EXPECT_BUF(b, want) expect_buf((b), (want), sizeof(want) - 1, __LINE__)

static void json_of(pbuf_t *b, const char *s, size_t len) {
    pbuf_init(b);
    presence_json_string(b, (pstr_t){s, len});
}

static void test_json_escaping(void) {
    pbuf_t b;
    json_of(&b, "", 0);
    EXPECT_BUF(&b, "\"\"");
    json_of(&b, "plain-id_42", 11);
    EXPECT_BUF(&b, "\"plain-id_42\"");
    json_of(&b, "a\"b\\c", 5);
    EXPECT_BUF(&b, "\"a\\\"b\\\\c\"");
    json_of(&b, "\b\f\n\r\t", 5);
    EXPECT_BUF(&b, "\"\\b\\f\\n\\r\\t\"");
    /* Other control characters (NUL included) become \u00XX, lowercase hex. */
    json_of(&b, "x\0y\x01\x1f", 5);
    EXPECT_BUF(&b, "\"x\\u0000y\\u0001\\u001f\"");
    /* DEL, slashes and UTF-8 pass through unchanged. */
    json_of(&b, "\x7f/caf\xc3\xa9 \xf0\x9f\x98\x80", 12);
    EXPECT_BUF(&b, "\"\x7f/caf\xc3\xa9 \xf0\x9f\x98\x80\"");
    /* Escapes at both ends and in a row. */
    json_of(&b, "\"\"\\", 3);
    EXPECT_BUF(&b, "\"\\\"\\\"\\\\\"");
}

static void test_numbers(void) {
    pbuf_t b;
    pbuf_init(&b);
    pbuf_put_u64(&b, 0);
    EXPECT_BUF(&b, "0");
    pbuf_init(&b);
    pbuf_put_u64(&b, 1733540000123ULL);
    EXPECT_BUF(&b, "1733540000123");
    pbuf_init(&b);
    pbuf_put_u64(&b, UINT64_MAX);
    EXPECT_BUF(&b, "18446744073709551615");
}

static void test_payloads(void) {
    pbuf_t b;
    presence_client_t c = {
        .client_id = pstr("sensor-1"),
        .has_username = true,
        .username = pstr("al\"ice"),
        .peer = pstr("127.0.0.1:50412"),
        .protocol = PRESENCE_MQTT5,
    };
    pbuf_init(&b);
    presence_online_payload(&b, &c, 1733540000123ULL);
    EXPECT_BUF(&b, "{\"client_id\":\"sensor-1\",\"online\":true,\"username\":\"al\\\"ice\","
                   "\"peer\":\"127.0.0.1:50412\",\"protocol\":\"5\",\"since\":1733540000123}");

    c.has_username = false;
    c.protocol = PRESENCE_MQTT311;
    c.peer = pstr("[::1]:1883");
    c.client_id = pstr("line\nbreak");
    pbuf_init(&b);
    presence_online_payload(&b, &c, 7);
    EXPECT_BUF(&b, "{\"client_id\":\"line\\nbreak\",\"online\":true,\"username\":null,"
                   "\"peer\":\"[::1]:1883\",\"protocol\":\"3.1.1\",\"since\":7}");

    c.protocol = PRESENCE_MQTT31;
    c.client_id = pstr("old");
    pbuf_init(&b);
    presence_online_payload(&b, &c, 0);
    EXPECT_BUF(&b, "{\"client_id\":\"old\",\"online\":true,\"username\":null,"
                   "\"peer\":\"[::1]:1883\",\"protocol\":\"3.1\",\"since\":0}");

    pbuf_init(&b);
    presence_offline_payload(&b, pstr("sensor-1"), pstr("keep alive timeout"), 1733540000999ULL);
    EXPECT_BUF(&b, "{\"client_id\":\"sensor-1\",\"online\":false,\"reason\":\"keep alive timeout\","
                   "\"since\":1733540000999}");

    pbuf_init(&b);
    presence_offline_payload(&b, pstr("x"), pstr("protocol error: \"bad\"\tpacket"), 1);
    EXPECT_BUF(&b, "{\"client_id\":\"x\",\"online\":false,"
                   "\"reason\":\"protocol error: \\\"bad\\\"\\tpacket\",\"since\":1}");

    CHECK(strcmp(presence_protocol_name(PRESENCE_MQTT5), "5") == 0);
    CHECK(strcmp(presence_protocol_name(PRESENCE_MQTT311), "3.1.1") == 0);
    CHECK(strcmp(presence_protocol_name(PRESENCE_MQTT31), "3.1") == 0);
}

static void test_topics(void) {
    pbuf_t b;
    pbuf_init(&b);
    CHECK(presence_topic(&b, pstr("presence"), pstr("sensor-1")));
    EXPECT_BUF(&b, "presence/sensor-1");
    pbuf_init(&b);
    CHECK(presence_topic(&b, pstr("site/a/presence"), pstr("caf\xc3\xa9")));
    EXPECT_BUF(&b, "site/a/presence/caf\xc3\xa9");
    /* A slash in the id only adds levels. */
    pbuf_init(&b);
    CHECK(presence_topic(&b, pstr("presence"), pstr("$bridge/edge-1")));
    EXPECT_BUF(&b, "presence/$bridge/edge-1");
    /* Ids that cannot be part of a topic name write nothing. */
    const char *bad[] = {"", "a+b", "#", "x/#"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pbuf_init(&b);
        CHECK(!presence_topic(&b, pstr("presence"), pstr(bad[i])));
        CHECK(b.len == 0);
        pbuf_free(&b);
    }
    pbuf_init(&b);
    CHECK(!presence_topic(&b, pstr("presence"), (pstr_t){"a\0b", 3}));
    CHECK(b.len == 0);
    CHECK(presence_client_id_ok(pstr("a/b")));
    CHECK(!presence_client_id_ok(pstr("")));

    /* Prefix checks: trailing slashes trimmed; empty and wildcards refused. */
    pstr_t t = {NULL, 0};
    CHECK(presence_check_prefix(pstr("presence"), &t) == NULL && t.len == 8);
    CHECK(presence_check_prefix(pstr("status/online//"), &t) == NULL && t.len == 13 &&
          memcmp(t.ptr, "status/online", 13) == 0);
    CHECK(presence_check_prefix(pstr("$SYS/presence"), &t) == NULL && t.len == 13);
    CHECK(presence_check_prefix(pstr(""), &t) != NULL);
    CHECK(presence_check_prefix(pstr("/"), &t) != NULL);
    CHECK(presence_check_prefix(pstr("presence/+"), &t) != NULL);
    CHECK(presence_check_prefix(pstr("presence/#"), &t) != NULL);
}

static void test_bool(void) {
    bool v = false;
    CHECK(presence_parse_bool(pstr("true"), &v) == NULL && v);
    CHECK(presence_parse_bool(pstr("false"), &v) == NULL && !v);
    CHECK(presence_parse_bool(pstr("yes"), &v) != NULL);
    CHECK(presence_parse_bool(pstr("TRUE"), &v) != NULL);
    CHECK(presence_parse_bool(pstr(""), &v) != NULL);
}

static bool excluded(const presence_prefixes_t *p, const char *id) {
    return presence_excluded(p, pstr(id));
}

static void test_exclusion(void) {
    presence_prefixes_t p = {NULL, NULL, 0};
    /* Nothing configured: nothing excluded. */
    CHECK(!excluded(&p, "$bridge/edge"));

    CHECK(presence_parse_prefixes(pstr("[\"$bridge/\", \"test-\"]"), &p) == NULL);
    CHECK(p.count == 2);
    CHECK(excluded(&p, "$bridge/edge-1"));
    CHECK(excluded(&p, "$bridge/"));
    CHECK(excluded(&p, "test-42"));
    CHECK(!excluded(&p, "$bridge"));
    CHECK(!excluded(&p, "sensor-1"));
    CHECK(!excluded(&p, "a-test-1"));
    CHECK(!excluded(&p, ""));

    /* Escapes inside the JSON strings, whitespace around everything. */
    CHECK(presence_parse_prefixes(pstr(" [ \"a\\\"q\" ,\"\\u00e9t\\u00E9-\",\"\\ud83d\\ude00\",\"x\\/y\" ] \n"), &p) == NULL);
    CHECK(p.count == 4);
    CHECK(excluded(&p, "a\"q1"));
    CHECK(excluded(&p, "\xc3\xa9t\xc3\xa9-7"));
    CHECK(excluded(&p, "\xf0\x9f\x98\x80!"));
    CHECK(excluded(&p, "x/y/z"));
    CHECK(!excluded(&p, "$bridge/edge-1")); /* the previous list was replaced */

    /* An empty list excludes nothing. */
    CHECK(presence_parse_prefixes(pstr("[]"), &p) == NULL);
    CHECK(p.count == 0);
    CHECK(!excluded(&p, "anything"));

    /* A bare scalar (not JSON) and a lone JSON string are lists of one. */
    CHECK(presence_parse_prefixes(pstr("$bridge/"), &p) == NULL);
    CHECK(p.count == 1 && excluded(&p, "$bridge/x") && !excluded(&p, "x"));
    CHECK(presence_parse_prefixes(pstr("\"dev-\""), &p) == NULL);
    CHECK(p.count == 1 && excluded(&p, "dev-1") && !excluded(&p, "\"dev-1"));

    /* Malformed values are refused and leave the current list alone. */
    const char *bad[] = {
        "",        "   ",         "[",          "[\"a\"",     "[\"a\",]", "[a]",
        "[\"a\" \"b\"]", "[\"a\"] x",  "[\"\\q\"]",  "[\"\\u12\"]", "[\"\\ud83d\"]",
        "[\"\\ude00\"]", "[\"\"]",     "[\"ok\", \"\"]", "[1]",      "[\"a\nb\"]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *err = presence_parse_prefixes(pstr(bad[i]), &p);
        if (err == NULL) fprintf(stderr, "accepted bad exclude value [%s]\n", bad[i]);
        CHECK(err != NULL);
        CHECK(p.count == 1 && excluded(&p, "dev-1"));
    }
    presence_prefixes_free(&p);
    CHECK(p.count == 0 && p.items == NULL);
}

static void test_disconnect_reasons(void) {
    CHECK(presence_reports_disconnect(pstr("client disconnected")));
    CHECK(presence_reports_disconnect(pstr("keep alive timeout")));
    CHECK(presence_reports_disconnect(pstr("peer closed")));
    CHECK(presence_reports_disconnect(pstr("")));
    CHECK(presence_reports_disconnect(pstr("taken over!")));
    CHECK(!presence_reports_disconnect(pstr("taken over")));
    CHECK(!presence_reports_disconnect(pstr("taken_over")));
    CHECK(!presence_reports_disconnect(pstr("Taken Over")));
}

int main(void) {
    test_json_escaping();
    test_numbers();
    test_payloads();
    test_topics();
    test_bool();
    test_exclusion();
    test_disconnect_reasons();
    printf("test_presence: %d checks passed\n", checks);
    return 0;
}
