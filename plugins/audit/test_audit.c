/*
 * Native tests of the audit plugin's pure logic (audit_core.c): JSON escaping, the totals
 * (disconnect reasons, counting), the stored totals and the summary JSON and reading them
 * back, the per-client binary record, the in-memory client table, the `exclude` list and
 * the topic check. Built and run by test.sh with the host's clang-19; exits non-zero on the
 * first failure.
 */
#include "audit_core.h"

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
static void expect_buf(abuf_t *b, const char *want, size_t want_len, int line) {
    checks++;
    if (b->failed || b->len != want_len || memcmp(b->ptr, want, want_len) != 0) {
        fprintf(stderr, "%s:%d: got [%.*s] (%zu bytes), want [%.*s] (%zu bytes)\n", __FILE__, line,
                (int)b->len, b->ptr ? b->ptr : "", b->len, (int)want_len, want, want_len);
        exit(1);
    }
    abuf_free(b);
}
#define EXPECT_BUF(b, want) expect_buf((b), (want), sizeof(want) - 1, __LINE__)

static astr_t lit(const char *s, size_t len) {
    return (astr_t){s, len};
}
#define LIT(s) lit((s), sizeof(s) - 1)

static void test_json_escaping(void) {
    abuf_t b;
    abuf_init(&b);
    audit_json_string(&b, LIT(""));
    EXPECT_BUF(&b, "\"\"");
    audit_json_string(&b, LIT("peer_closed"));
    EXPECT_BUF(&b, "\"peer_closed\"");
    audit_json_string(&b, LIT("a\"b\\c\b\f\n\r\t"));
    EXPECT_BUF(&b, "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\"");
    audit_json_string(&b, LIT("x\0y\x01\x1f\x7f caf\xc3\xa9"));
    EXPECT_BUF(&b, "\"x\\u0000y\\u0001\\u001f\x7f caf\xc3\xa9\"");
    abuf_put_u64(&b, 0);
    abuf_puts(&b, " ");
    abuf_put_u64(&b, UINT64_MAX);
    EXPECT_BUF(&b, "0 18446744073709551615");
}

static void test_reasons_are_sorted_and_bounded(void) {
    static audit_totals_t t;
    audit_totals_reset(&t);
    audit_totals_disconnect(&t, LIT("peer_closed"));
    audit_totals_disconnect(&t, LIT("disconnect"));
    audit_totals_disconnect(&t, LIT("peer_closed"));
    audit_totals_disconnect(&t, LIT("keep_alive"));
    CHECK(t.nreasons == 3);
    CHECK(strcmp(t.reasons[0].name, "disconnect") == 0);
    CHECK(strcmp(t.reasons[1].name, "keep_alive") == 0);
    CHECK(strcmp(t.reasons[2].name, "peer_closed") == 0);
    CHECK(audit_totals_reason(&t, LIT("peer_closed")) == 2);
    CHECK(audit_totals_reason(&t, LIT("peer")) == 0);
    /* A prefix sorts first. */
    audit_totals_disconnect(&t, LIT("peer"));
    CHECK(strcmp(t.reasons[2].name, "peer") == 0);
    /* Empty and overlong reasons go to "other". */
    char longer[AUDIT_MAX_REASON_LEN + 1];
    memset(longer, 'x', sizeof longer);
    audit_totals_disconnect(&t, lit(longer, sizeof longer));
    audit_totals_disconnect(&t, LIT(""));
    CHECK(audit_totals_reason(&t, LIT("other")) == 2);
    /* Exactly the longest allowed keeps its name. */
    audit_totals_disconnect(&t, lit(longer, AUDIT_MAX_REASON_LEN));
    CHECK(audit_totals_reason(&t, lit(longer, AUDIT_MAX_REASON_LEN)) == 1);

    /* Many distinct reasons: the table fills up, "other" takes the rest, nothing is lost. */
    audit_totals_reset(&t);
    uint64_t total = 0;
    for (int k = 0; k < 100; k++) {
        char name[16];
        int n = snprintf(name, sizeof name, "r%03d", k);
        audit_totals_disconnect(&t, lit(name, (size_t)n));
        total++;
    }
    CHECK(t.nreasons == AUDIT_MAX_REASONS);
    uint64_t sum = 0;
    for (size_t k = 0; k < t.nreasons; k++) sum += t.reasons[k].count;
    CHECK(sum == total);
    CHECK(audit_totals_reason(&t, LIT("other")) == 100 - (AUDIT_MAX_REASONS - 1));
    CHECK(audit_totals_reason(&t, LIT("r000")) == 1);
    CHECK(audit_totals_reason(&t, LIT("r099")) == 0);
    /* "other" given by name while the table is full: counted there. */
    audit_totals_disconnect(&t, LIT("other"));
    CHECK(audit_totals_reason(&t, LIT("other")) == 100 - (AUDIT_MAX_REASONS - 1) + 1);
}

static void test_counting(void) {
    static audit_totals_t t;
    audit_totals_reset(&t);
    audit_client_t a = {0}, b = {0};
    audit_count(&t, &a, AUDIT_CONNECTED, 0);
    audit_count(&t, &a, AUDIT_PUBLISHED, 10);
    audit_count(&t, &a, AUDIT_PUBLISHED, 5);
    audit_count(&t, &b, AUDIT_SUBSCRIBED, 0);
    audit_count(&t, &b, AUDIT_DROPPED, 0);
    audit_count(&t, NULL, AUDIT_PUBLISHED, 7);
    CHECK(a.connects == 1 && a.published == 2 && a.bytes == 15 && a.subscriptions == 0 && a.dropped == 0);
    CHECK(b.connects == 0 && b.published == 0 && b.subscriptions == 1 && b.dropped == 1);
    CHECK(t.connects == 1 && t.published == 3 && t.bytes == 22 && t.subscriptions == 1 && t.dropped == 1);
}

static void test_totals_json_and_back(void) {
    static audit_totals_t t, back;
    audit_totals_reset(&t);
    abuf_t b;
    abuf_init(&b);
    audit_totals_json(&b, &t);
    EXPECT_BUF(&b, "{\"connects\":0,\"disconnects\":{},\"published\":0,\"bytes\":0,\"subscriptions\":0,"
                   "\"dropped\":0,\"reloads\":0,\"reload_failures\":0,\"expired\":0,\"clients\":0}");

    t.connects = 3;
    t.published = 12;
    t.bytes = UINT64_MAX;
    t.subscriptions = 2;
    t.dropped = 4;
    t.reloads = 1;
    t.reload_failures = 5;
    t.expired = 6;
    t.clients = 7;
    audit_totals_disconnect(&t, LIT("disconnect"));
    audit_totals_disconnect(&t, LIT("disconnect"));
    audit_totals_disconnect(&t, LIT("peer_closed"));
    audit_totals_disconnect(&t, LIT("we\"ird\n"));
    audit_summary_json(&b, &t, 1733540000123ull);
    EXPECT_BUF(&b, "{\"connects\":3,\"disconnects\":{\"disconnect\":2,\"peer_closed\":1,\"we\\\"ird\\n\":1},"
                   "\"published\":12,\"bytes\":18446744073709551615,\"subscriptions\":2,\"dropped\":4,"
                   "\"reloads\":1,\"reload_failures\":5,\"expired\":6,\"clients\":7,\"at\":1733540000123}");

    /* The stored form reads back to the same totals (reason names unescaped). */
    audit_totals_json(&b, &t);
    CHECK(audit_totals_parse(lit(b.ptr, b.len), &back) == NULL);
    abuf_free(&b);
    CHECK(memcmp(&back.connects, &t.connects, offsetof(audit_totals_t, nreasons)) == 0);
    CHECK(back.nreasons == 3);
    CHECK(audit_totals_reason(&back, LIT("we\"ird\n")) == 1);
    CHECK(audit_totals_reason(&back, LIT("disconnect")) == 2);
    audit_totals_json(&b, &back);
    abuf_t again;
    abuf_init(&again);
    audit_totals_json(&again, &t);
    CHECK(b.len == again.len && memcmp(b.ptr, again.ptr, b.len) == 0);
    abuf_free(&b);
    abuf_free(&again);

    /* A summary reads back too (its "at" is an unknown key, ignored), as does whitespace,
     * a missing counter (0), an unknown object and \u escapes. */
    const char *ok = " { \"connects\" : 9 , \"at\": 5, \"future\": {\"x\": 1}, "
                     "\"disconnects\": {\"k\\u00e9\\ud83d\\ude00\": 4} }\n";
    CHECK(audit_totals_parse(astr(ok), &back) == NULL);
    CHECK(back.connects == 9 && back.published == 0 && back.clients == 0);
    CHECK(back.nreasons == 1 && audit_totals_reason(&back, LIT("k\xc3\xa9\xf0\x9f\x98\x80")) == 4);
    CHECK(audit_totals_parse(LIT("{}"), &back) == NULL && back.connects == 0 && back.nreasons == 0);

    /* Garbage is refused and leaves the output alone. */
    static const char *bad[] = {
        "",
        "[]",
        "{",
        "{\"connects\":}",
        "{\"connects\":-1}",
        "{\"connects\":1.5}",
        "{\"connects\":1e3}",
        "{\"connects\":18446744073709551616}",
        "{\"connects\":\"1\"}",
        "{\"connects\":1,}",
        "{\"connects\":1} x",
        "{\"disconnects\":{\"a\":\"b\"}}",
        "{\"disconnects\":{\"a\":1}",
        "{\"a\\q\":1}",
        "{\"a\\ud800\":1}",
        "{\"a\\u12\":1}",
        "{\"a\x01\":1}",
        "{connects:1}",
    };
    back.connects = 42;
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        if (audit_totals_parse(astr(bad[k]), &back) == NULL) {
            fprintf(stderr, "accepted bad totals %s\n", bad[k]);
            exit(1);
        }
        CHECK(back.connects == 42);
    }
    /* Stored reasons beyond the table end up in "other", summed. */
    abuf_init(&b);
    abuf_puts(&b, "{\"disconnects\":{");
    for (int k = 0; k < 40; k++) {
        char item[32];
        snprintf(item, sizeof item, "%s\"r%02d\":2", k ? "," : "", k);
        abuf_puts(&b, item);
    }
    abuf_puts(&b, "}}");
    CHECK(audit_totals_parse(lit(b.ptr, b.len), &back) == NULL);
    abuf_free(&b);
    CHECK(back.nreasons == AUDIT_MAX_REASONS);
    CHECK(audit_totals_reason(&back, LIT("other")) == 2 * (40 - (AUDIT_MAX_REASONS - 1)));
}

static void test_client_record(void) {
    audit_client_t c = {1, 2, 0x0102030405060708ull, 4, UINT64_MAX}, back;
    uint8_t bin[AUDIT_RECORD_LEN];
    audit_client_encode(&c, bin);
    CHECK(bin[0] == AUDIT_RECORD_VERSION);
    CHECK(bin[1] == 1 && bin[2] == 0); /* little-endian */
    CHECK(bin[17] == 0x08 && bin[24] == 0x01);
    CHECK(audit_client_decode(bin, sizeof bin, &back));
    CHECK(memcmp(&c, &back, sizeof c) == 0);
    audit_client_t untouched = {9, 9, 9, 9, 9};
    CHECK(!audit_client_decode(bin, sizeof bin - 1, &untouched));
    bin[0] = 2;
    CHECK(!audit_client_decode(bin, sizeof bin, &untouched));
    CHECK(untouched.connects == 9);

    abuf_t key;
    abuf_init(&key);
    audit_client_key(&key, LIT("sensor/17"));
    EXPECT_BUF(&key, "c/sensor/17");
    audit_client_key(&key, LIT(""));
    EXPECT_BUF(&key, "c/");
}

static void test_reload_duplicates(void) {
    audit_reload_t none = {0, 0};
    CHECK(!audit_reload_duplicate(&none, 2, 1000));
    audit_reload_t last = {2, 1000000};
    /* The same generation again soon: a duplicate (the old and the new plugin both saw it). */
    CHECK(audit_reload_duplicate(&last, 2, 1000000));
    CHECK(audit_reload_duplicate(&last, 2, 1000000 + AUDIT_RELOAD_DUPLICATE_MS - 1));
    CHECK(audit_reload_duplicate(&last, 2, 1000000 - 5)); /* clocks step back */
    /* Another generation, or the same one much later (a restarted broker counts from 1). */
    CHECK(!audit_reload_duplicate(&last, 3, 1000000));
    CHECK(!audit_reload_duplicate(&last, 1, 1000000));
    CHECK(!audit_reload_duplicate(&last, 2, 1000000 + AUDIT_RELOAD_DUPLICATE_MS));
    uint8_t bin[AUDIT_RELOAD_LEN];
    audit_reload_t r = {0x0102030405060708ull, UINT64_MAX}, back = {0, 0};
    audit_reload_encode(&r, bin);
    CHECK(bin[0] == 0x08 && bin[7] == 0x01 && bin[8] == 0xff);
    CHECK(audit_reload_decode(bin, sizeof bin, &back));
    CHECK(back.generation == r.generation && back.at_ms == r.at_ms);
    CHECK(!audit_reload_decode(bin, sizeof bin - 1, &back));
}

static void test_memory_table(void) {
    audit_table_t t;
    audit_table_init(&t, 300);
    bool created;
    audit_client_t *a = audit_table_get(&t, LIT("a"), &created);
    CHECK(a != NULL && created && a->connects == 0);
    a->connects = 5;
    /* Found again (and not created) across growth. */
    char id[16];
    for (int k = 0; k < 299; k++) {
        int n = snprintf(id, sizeof id, "client-%d", k);
        audit_client_t *c = audit_table_get(&t, lit(id, (size_t)n), &created);
        CHECK(c != NULL && created);
        c->published = (uint64_t)k;
    }
    CHECK(t.count == 300);
    a = audit_table_get(&t, LIT("a"), &created);
    CHECK(a != NULL && !created && a->connects == 5);
    for (int k = 0; k < 299; k++) {
        int n = snprintf(id, sizeof id, "client-%d", k);
        audit_client_t *c = audit_table_get(&t, lit(id, (size_t)n), &created);
        CHECK(c != NULL && !created && c->published == (uint64_t)k);
    }
    /* Full: known ids still found, new ones refused. */
    CHECK(audit_table_get(&t, LIT("newcomer"), &created) == NULL && !created);
    CHECK(audit_table_get(&t, LIT("client-7"), &created) != NULL);
    /* An empty id and ids differing only in length are distinct keys. */
    audit_table_free(&t);
    audit_table_init(&t, 10);
    CHECK(audit_table_get(&t, LIT(""), &created) != NULL && created);
    CHECK(audit_table_get(&t, LIT("x"), &created) != NULL && created);
    CHECK(audit_table_get(&t, LIT("x\0"), &created) != NULL && created);
    CHECK(audit_table_get(&t, LIT(""), &created) != NULL && !created);
    CHECK(t.count == 3);
    audit_table_free(&t);
}

static void test_exclude(void) {
    audit_prefixes_t p = {NULL, NULL, 0};
    CHECK(audit_parse_prefixes(LIT("[\"$bridge/\", \"monitor-\", \"a\\\"b\"]"), &p) == NULL);
    CHECK(p.count == 3);
    CHECK(audit_excluded(&p, LIT("$bridge/edge-1")));
    CHECK(audit_excluded(&p, LIT("monitor-")));
    CHECK(audit_excluded(&p, LIT("a\"bc")));
    CHECK(!audit_excluded(&p, LIT("monitor")));
    CHECK(!audit_excluded(&p, LIT("sensor-1")));
    CHECK(!audit_excluded(&p, LIT("")));
    /* One string, a bare YAML scalar, an empty list. */
    CHECK(audit_parse_prefixes(LIT(" \"test-\" "), &p) == NULL && p.count == 1);
    CHECK(audit_excluded(&p, LIT("test-1")) && !audit_excluded(&p, LIT("tes")));
    CHECK(audit_parse_prefixes(LIT("quiet-"), &p) == NULL && p.count == 1);
    CHECK(audit_excluded(&p, LIT("quiet-watch")));
    CHECK(audit_parse_prefixes(LIT("[ ]"), &p) == NULL && p.count == 0);
    CHECK(!audit_excluded(&p, LIT("anyone")));
    /* Refused, and the previous list stays. */
    CHECK(audit_parse_prefixes(LIT("[\"keep-\"]"), &p) == NULL);
    static const char *bad[] = {"", "   ", "[\"\"]", "[\"a\",]", "[\"a\" \"b\"]", "[1]", "[\"a\"] x", "[\"a", "\"\""};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        if (audit_parse_prefixes(astr(bad[k]), &p) == NULL) {
            fprintf(stderr, "accepted bad exclude %s\n", bad[k]);
            exit(1);
        }
        CHECK(p.count == 1 && audit_excluded(&p, LIT("keep-1")));
    }
    audit_prefixes_free(&p);
    CHECK(p.count == 0);
}

static void test_topic(void) {
    CHECK(audit_check_topic(LIT("audit/summary")) == NULL);
    CHECK(audit_check_topic(LIT("$SYS/audit")) == NULL);
    CHECK(audit_check_topic(LIT("")) != NULL);
    CHECK(audit_check_topic(LIT("audit/+")) != NULL);
    CHECK(audit_check_topic(LIT("audit/#")) != NULL);
    CHECK(audit_check_topic(LIT("a\0b")) != NULL);
}

int main(void) {
    test_json_escaping();
    test_reasons_are_sorted_and_bounded();
    test_counting();
    test_totals_json_and_back();
    test_client_record();
    test_reload_duplicates();
    test_memory_table();
    test_exclude();
    test_topic();
    printf("audit core: %d checks passed\n", checks);
    return 0;
}
