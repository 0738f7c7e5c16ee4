/*
 * audit core: the pure logic of the audit plugin, free of Wasm and binding types so that it
 * compiles both into the plugin (audit.c) and into the native test program (test_audit.c).
 *
 * - a growable byte buffer and JSON string escaping;
 * - the broker-wide totals (connects, disconnects by reason, messages and bytes published,
 *   subscriptions, drops, reloads ok / failed, session expiries, clients), their JSON form
 *   (stored in the key-value store under `totals`) and the summary published on every tick;
 *   a reader for that JSON;
 * - the per-client record (stored under `c/<client id>`): a fixed 41-byte binary record;
 * - the in-memory client table used when the key-value store is not granted;
 * - the `exclude` list of client-id prefixes (JSON) and config checks.
 */
#ifndef AUDIT_CORE_H
#define AUDIT_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A borrowed byte string (not NUL-terminated). */
typedef struct {
    const char *ptr;
    size_t len;
} astr_t;

/* A view of a NUL-terminated C string. */
astr_t astr(const char *s);

/* A growable byte buffer. After an allocation failure `failed` is set and further writes
 * are ignored; the caller checks `failed` once at the end. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
    bool failed;
} abuf_t;

void abuf_init(abuf_t *b);
void abuf_free(abuf_t *b);
void abuf_put(abuf_t *b, const char *bytes, size_t len);
void abuf_puts(abuf_t *b, const char *s);
void abuf_put_u64(abuf_t *b, uint64_t n);

/* Appends `s` as a JSON string literal (with the quotes): `"` and `\` are escaped, control
 * characters become \b \f \n \r \t or \u00XX; everything else (UTF-8 included) is copied. */
void audit_json_string(abuf_t *out, astr_t s);

/* ---------------------------------------------------------------------------------------
 * Totals
 * ------------------------------------------------------------------------------------- */

/* Distinct disconnect reasons kept; further ones (and reasons that are empty or longer than
 * AUDIT_MAX_REASON_LEN) are counted under "other". */
#define AUDIT_MAX_REASONS 32
#define AUDIT_MAX_REASON_LEN 64

typedef struct {
    char name[AUDIT_MAX_REASON_LEN + 1];
    size_t len;
    uint64_t count;
} audit_reason_t;

/* Broker-wide counters. */
typedef struct {
    uint64_t connects;
    uint64_t published;
    uint64_t bytes;
    uint64_t subscriptions;
    uint64_t dropped;
    uint64_t reloads;
    uint64_t reload_failures;
    uint64_t expired;
    /* Clients with a usage record. */
    uint64_t clients;
    /* Disconnects by reason, sorted by name. */
    size_t nreasons;
    audit_reason_t reasons[AUDIT_MAX_REASONS];
} audit_totals_t;

/* Zeroes every counter. */
void audit_totals_reset(audit_totals_t *t);

/* Counts one disconnect with `reason`. */
void audit_totals_disconnect(audit_totals_t *t, astr_t reason);

/* The count for `reason` (0 when never seen). */
uint64_t audit_totals_reason(const audit_totals_t *t, astr_t reason);

/* The stored form of the totals:
 * {"connects":N,"disconnects":{"reason":N,...},"published":N,"bytes":N,"subscriptions":N,
 *  "dropped":N,"reloads":N,"reload_failures":N,"expired":N,"clients":N} */
void audit_totals_json(abuf_t *out, const audit_totals_t *t);

/* The published summary: the stored form with "at":<ms> added at the end. */
void audit_summary_json(abuf_t *out, const audit_totals_t *t, uint64_t at_ms);

/* Reads the stored form (or a summary) back: NULL on success (replacing *out), else a static
 * message saying what is wrong (*out untouched). Missing counters are 0; unknown keys with
 * an integer or an object of integers as value are ignored (a newer version's record). */
const char *audit_totals_parse(astr_t json, audit_totals_t *out);

/* ---------------------------------------------------------------------------------------
 * Per-client records
 * ------------------------------------------------------------------------------------- */

/* What one client did. */
typedef struct {
    uint64_t connects;
    uint64_t published;
    uint64_t bytes;
    uint64_t subscriptions;
    uint64_t dropped;
} audit_client_t;

/* What happened to a client, for audit_count. */
typedef enum {
    AUDIT_CONNECTED,
    AUDIT_SUBSCRIBED,
    /* `bytes`: the payload size. */
    AUDIT_PUBLISHED,
    /* A message for the client was dropped. */
    AUDIT_DROPPED,
} audit_event_t;

/* Counts `ev` into the client's record (when not NULL) and into the totals. */
void audit_count(audit_totals_t *t, audit_client_t *c, audit_event_t ev, uint64_t bytes);

/* The stored record: version byte 1, then connects, published, bytes, subscriptions and
 * dropped as unsigned 64-bit little-endian integers. */
#define AUDIT_RECORD_VERSION 1
#define AUDIT_RECORD_LEN 41
void audit_client_encode(const audit_client_t *c, uint8_t out[AUDIT_RECORD_LEN]);

/* Reads a stored record; false (and *c untouched) when it is not one. */
bool audit_client_decode(const uint8_t *bytes, size_t len, audit_client_t *c);

/* The key-value store key of a client: `c/<client id>`. */
void audit_client_key(abuf_t *out, astr_t client_id);

/* Clients counted in memory (when the key-value store is not granted): an open-addressing
 * hash table of client ids, holding at most `max` clients. */
typedef struct {
    char *id;
    size_t len;
    audit_client_t c;
} audit_entry_t;

typedef struct {
    audit_entry_t *slots;
    size_t cap;
    size_t count;
    size_t max;
} audit_table_t;

/* Clients kept in memory at most (default for audit_table_init). */
#define AUDIT_MEMORY_CLIENTS 10000

void audit_table_init(audit_table_t *t, size_t max);
void audit_table_free(audit_table_t *t);

/* The record of `id`, created (zeroed, *created set) when missing; NULL when the table is
 * full or out of memory. */
audit_client_t *audit_table_get(audit_table_t *t, astr_t id, bool *created);

/* ---------------------------------------------------------------------------------------
 * Reloads
 * ------------------------------------------------------------------------------------- */

/* Around a reload in force, the plugin of the outgoing configuration and that of the new one
 * can both be handed the same `config-reloaded` event (see README.md). A reload in force is
 * counted once per generation: an event for the generation counted last, within this many
 * milliseconds of it, is a duplicate. (Generations restart at 1 with the broker, so the
 * window keeps a restarted broker's reloads from being mistaken for the previous run's.) */
#define AUDIT_RELOAD_DUPLICATE_MS 60000

/* The reload counted last, as stored under `reload`: generation and time (ms). */
typedef struct {
    uint64_t generation;
    uint64_t at_ms;
} audit_reload_t;

/* Whether a reload in force as `generation` at `now_ms` was counted already (`last`). */
bool audit_reload_duplicate(const audit_reload_t *last, uint64_t generation, uint64_t now_ms);

/* The stored form: generation and time as unsigned 64-bit little-endian integers. */
#define AUDIT_RELOAD_LEN 16
void audit_reload_encode(const audit_reload_t *r, uint8_t out[AUDIT_RELOAD_LEN]);
bool audit_reload_decode(const uint8_t *bytes, size_t len, audit_reload_t *r);

/* ---------------------------------------------------------------------------------------
 * Config
 * ------------------------------------------------------------------------------------- */

/* Client-id prefixes that are not audited. */
typedef struct {
    char **items;
    size_t *lens;
    size_t count;
} audit_prefixes_t;

void audit_prefixes_free(audit_prefixes_t *p);

/* Parses the `exclude` config value: a JSON list of strings (`["$bridge/", "test-"]`); a
 * single JSON string or a bare (non-JSON) text is a list of one. NULL on success (replacing
 * *out), else a static message saying what is wrong (*out untouched). */
const char *audit_parse_prefixes(astr_t json, audit_prefixes_t *out);

/* Whether `id` starts with one of the prefixes. */
bool audit_excluded(const audit_prefixes_t *p, astr_t id);

/* Checks the `topic` config value (a topic name: not empty, no `+`, `#` or NUL, at most
 * 65535 bytes); NULL when usable, else why not. */
const char *audit_check_topic(astr_t topic);

#endif
