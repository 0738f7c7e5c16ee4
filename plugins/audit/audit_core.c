/*
 * audit core (see audit_core.h): buffers and JSON, the totals and their JSON forms, the
 * per-client binary record, the in-memory client table, the `exclude` list and config
 * checks; no Wasm types, so that test_audit.c runs all of it natively.
 */
#include "audit_core.h"

#include <stdlib.h>
#include <string.h>

astr_t astr(const char *s) {
    return (astr_t){s, strlen(s)};
}

static bool astr_eq(astr_t a, const char *b) {
    size_t n = strlen(b);
    return a.len == n && (n == 0 || memcmp(a.ptr, b, n) == 0);
}

/* ---------------------------------------------------------------------------------------
 * Buffer
 * ------------------------------------------------------------------------------------- */

void abuf_init(abuf_t *b) {
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
    b->failed = false;
}

void abuf_free(abuf_t *b) {
    free(b->ptr);
    abuf_init(b);
}

static bool abuf_reserve(abuf_t *b, size_t extra) {
    if (b->failed) return false;
    if (extra > SIZE_MAX - b->len) {
        b->failed = true;
        return false;
    }
    size_t need = b->len + extra;
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->ptr, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->ptr = p;
    b->cap = cap;
    return true;
}

void abuf_put(abuf_t *b, const char *bytes, size_t len) {
    if (len == 0 || !abuf_reserve(b, len)) return;
    memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
}

void abuf_puts(abuf_t *b, const char *s) {
    abuf_put(b, s, strlen(s));
}

void abuf_put_u64(abuf_t *b, uint64_t n) {
    char digits[20];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n != 0);
    abuf_put(b, digits + i, sizeof digits - i);
}

void audit_json_string(abuf_t *out, astr_t s) {
    static const char hex[] = "0123456789abcdef";
    abuf_put(out, "\"", 1);
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c >= 0x20) continue;
            break;
        }
        abuf_put(out, s.ptr + run, i - run);
        run = i + 1;
        if (esc != NULL) {
            abuf_puts(out, esc);
        } else {
            memcpy(u, "\\u00", 4);
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
            abuf_put(out, u, 6);
        }
    }
    abuf_put(out, s.ptr + run, s.len - run);
    abuf_put(out, "\"", 1);
}

/* ---------------------------------------------------------------------------------------
 * JSON reading (just what the totals and the `exclude` list need)
 * ------------------------------------------------------------------------------------- */

static void skip_ws(astr_t s, size_t *i) {
    while (*i < s.len && (s.ptr[*i] == ' ' || s.ptr[*i] == '\t' || s.ptr[*i] == '\n' || s.ptr[*i] == '\r')) {
        (*i)++;
    }
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(astr_t s, size_t at, uint32_t *out) {
    if (at > s.len || s.len - at < 4) return false;
    uint32_t v = 0;
    for (size_t k = 0; k < 4; k++) {
        int d = hex_digit(s.ptr[at + k]);
        if (d < 0) return false;
        v = v * 16 + (uint32_t)d;
    }
    *out = v;
    return true;
}

static void put_utf8(abuf_t *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    abuf_put(b, u, n);
}

/* Reads the JSON string at s[*i] (which is `"`) into `out` (replacing its contents). */
static const char *parse_json_string(astr_t s, size_t *i, abuf_t *out) {
    out->len = 0;
    size_t k = *i + 1;
    while (k < s.len) {
        unsigned char c = (unsigned char)s.ptr[k];
        if (c == '"') {
            *i = k + 1;
            return out->failed ? "out of memory" : NULL;
        }
        if (c < 0x20) return "control character in a JSON string";
        if (c != '\\') {
            abuf_put(out, (const char *)&s.ptr[k], 1);
            k++;
            continue;
        }
        if (k + 1 >= s.len) break;
        char e = s.ptr[k + 1];
        k += 2;
        switch (e) {
        case '"': abuf_put(out, "\"", 1); break;
        case '\\': abuf_put(out, "\\", 1); break;
        case '/': abuf_put(out, "/", 1); break;
        case 'b': abuf_put(out, "\b", 1); break;
        case 'f': abuf_put(out, "\f", 1); break;
        case 'n': abuf_put(out, "\n", 1); break;
        case 'r': abuf_put(out, "\r", 1); break;
        case 't': abuf_put(out, "\t", 1); break;
        case 'u': {
            uint32_t cp;
            if (!read_hex4(s, k, &cp)) return "bad \\u escape in a JSON string";
            k += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo;
                if (k + 1 < s.len && s.ptr[k] == '\\' && s.ptr[k + 1] == 'u' && read_hex4(s, k + 2, &lo) &&
                    lo >= 0xdc00 && lo <= 0xdfff) {
                    k += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else {
                    return "lone surrogate in a JSON string";
                }
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return "lone surrogate in a JSON string";
            }
            put_utf8(out, cp);
            break;
        }
        default: return "bad escape in a JSON string";
        }
    }
    return "unterminated JSON string";
}

/* Reads an unsigned integer (no sign, fraction or exponent) that fits 64 bits. */
static const char *parse_uint(astr_t s, size_t *i, uint64_t *out) {
    size_t k = *i;
    uint64_t v = 0;
    if (k >= s.len || s.ptr[k] < '0' || s.ptr[k] > '9') return "expected an unsigned integer";
    while (k < s.len && s.ptr[k] >= '0' && s.ptr[k] <= '9') {
        uint64_t d = (uint64_t)(s.ptr[k] - '0');
        if (v > (UINT64_MAX - d) / 10) return "integer too large";
        v = v * 10 + d;
        k++;
    }
    if (k < s.len && (s.ptr[k] == '.' || s.ptr[k] == 'e' || s.ptr[k] == 'E')) return "expected an unsigned integer";
    *i = k;
    *out = v;
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Totals
 * ------------------------------------------------------------------------------------- */

void audit_totals_reset(audit_totals_t *t) {
    memset(t, 0, sizeof *t);
}

/* Bytewise order, shorter first on a common prefix. */
static int reason_cmp(const audit_reason_t *r, astr_t name) {
    size_t n = r->len < name.len ? r->len : name.len;
    int c = n ? memcmp(r->name, name.ptr, n) : 0;
    if (c != 0) return c;
    return (r->len > name.len) - (r->len < name.len);
}

/* Adds `count` to `name`'s counter, inserting it in order; "other" takes what does not fit. */
static void reason_add(audit_totals_t *t, astr_t name, uint64_t count) {
    /* The last slot is kept for "other", so that it can always be counted. */
    bool usable = name.len > 0 && name.len <= AUDIT_MAX_REASON_LEN;
    if (!usable) name = astr("other");
    for (;;) {
        size_t at = 0;
        while (at < t->nreasons && reason_cmp(&t->reasons[at], name) < 0) at++;
        if (at < t->nreasons && reason_cmp(&t->reasons[at], name) == 0) {
            t->reasons[at].count += count;
            return;
        }
        bool is_other = astr_eq(name, "other");
        if (t->nreasons < AUDIT_MAX_REASONS - 1 || (is_other && t->nreasons < AUDIT_MAX_REASONS)) {
            memmove(&t->reasons[at + 1], &t->reasons[at], (t->nreasons - at) * sizeof t->reasons[0]);
            audit_reason_t *r = &t->reasons[at];
            memcpy(r->name, name.ptr, name.len);
            r->name[name.len] = '\0';
            r->len = name.len;
            r->count = count;
            t->nreasons++;
            return;
        }
        name = astr("other"); /* full: count it there (found, or inserted into the kept slot) */
    }
}

void audit_totals_disconnect(audit_totals_t *t, astr_t reason) {
    reason_add(t, reason, 1);
}

uint64_t audit_totals_reason(const audit_totals_t *t, astr_t reason) {
    for (size_t k = 0; k < t->nreasons; k++) {
        if (reason_cmp(&t->reasons[k], reason) == 0) return t->reasons[k].count;
    }
    return 0;
}

static void put_field(abuf_t *b, const char *name, uint64_t v) {
    abuf_puts(b, ",\"");
    abuf_puts(b, name);
    abuf_puts(b, "\":");
    abuf_put_u64(b, v);
}

/* Everything but the closing brace. */
static void totals_fields(abuf_t *b, const audit_totals_t *t) {
    abuf_puts(b, "{\"connects\":");
    abuf_put_u64(b, t->connects);
    abuf_puts(b, ",\"disconnects\":{");
    for (size_t k = 0; k < t->nreasons; k++) {
        if (k) abuf_puts(b, ",");
        audit_json_string(b, (astr_t){t->reasons[k].name, t->reasons[k].len});
        abuf_puts(b, ":");
        abuf_put_u64(b, t->reasons[k].count);
    }
    abuf_puts(b, "}");
    put_field(b, "published", t->published);
    put_field(b, "bytes", t->bytes);
    put_field(b, "subscriptions", t->subscriptions);
    put_field(b, "dropped", t->dropped);
    put_field(b, "reloads", t->reloads);
    put_field(b, "reload_failures", t->reload_failures);
    put_field(b, "expired", t->expired);
    put_field(b, "clients", t->clients);
}

void audit_totals_json(abuf_t *out, const audit_totals_t *t) {
    totals_fields(out, t);
    abuf_puts(out, "}");
}

void audit_summary_json(abuf_t *out, const audit_totals_t *t, uint64_t at_ms) {
    totals_fields(out, t);
    put_field(out, "at", at_ms);
    abuf_puts(out, "}");
}

static uint64_t *totals_counter(audit_totals_t *t, astr_t key) {
    static const struct {
        const char *name;
        size_t offset;
    } fields[] = {
        {"connects", offsetof(audit_totals_t, connects)},
        {"published", offsetof(audit_totals_t, published)},
        {"bytes", offsetof(audit_totals_t, bytes)},
        {"subscriptions", offsetof(audit_totals_t, subscriptions)},
        {"dropped", offsetof(audit_totals_t, dropped)},
        {"reloads", offsetof(audit_totals_t, reloads)},
        {"reload_failures", offsetof(audit_totals_t, reload_failures)},
        {"expired", offsetof(audit_totals_t, expired)},
        {"clients", offsetof(audit_totals_t, clients)},
    };
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        if (astr_eq(key, fields[k].name)) return (uint64_t *)((char *)t + fields[k].offset);
    }
    return NULL;
}

/* Reads {"name":uint,...} at s[*i]; each pair goes to `t`'s reasons when `into` is set. */
static const char *parse_counts_object(astr_t s, size_t *i, audit_totals_t *into, abuf_t *key) {
    (*i)++; /* '{' */
    skip_ws(s, i);
    if (*i < s.len && s.ptr[*i] == '}') {
        (*i)++;
        return NULL;
    }
    for (;;) {
        skip_ws(s, i);
        if (*i >= s.len || s.ptr[*i] != '"') return "expected a key";
        const char *err = parse_json_string(s, i, key);
        if (err) return err;
        skip_ws(s, i);
        if (*i >= s.len || s.ptr[*i] != ':') return "expected :";
        (*i)++;
        skip_ws(s, i);
        uint64_t v;
        err = parse_uint(s, i, &v);
        if (err) return err;
        if (into) reason_add(into, (astr_t){key->ptr, key->len}, v);
        skip_ws(s, i);
        if (*i < s.len && s.ptr[*i] == ',') {
            (*i)++;
            continue;
        }
        if (*i < s.len && s.ptr[*i] == '}') {
            (*i)++;
            return NULL;
        }
        return "expected , or }";
    }
}

const char *audit_totals_parse(astr_t s, audit_totals_t *out) {
    /* Static: the totals hold a few KiB of reason names (Wasm stacks are small). */
    static audit_totals_t t;
    audit_totals_reset(&t);
    abuf_t key;
    abuf_init(&key);
    const char *err = NULL;
    size_t i = 0;
    skip_ws(s, &i);
    if (i >= s.len || s.ptr[i] != '{') {
        err = "expected a JSON object";
        goto done;
    }
    i++;
    skip_ws(s, &i);
    if (i < s.len && s.ptr[i] == '}') {
        i++;
        goto end;
    }
    for (;;) {
        skip_ws(s, &i);
        if (i >= s.len || s.ptr[i] != '"') {
            err = "expected a key";
            goto done;
        }
        err = parse_json_string(s, &i, &key);
        if (err) goto done;
        skip_ws(s, &i);
        if (i >= s.len || s.ptr[i] != ':') {
            err = "expected :";
            goto done;
        }
        i++;
        skip_ws(s, &i);
        astr_t k = {key.ptr, key.len};
        if (i < s.len && s.ptr[i] == '{') {
            /* parse_counts_object reuses `key` for the inner names: decide first. */
            bool is_disconnects = astr_eq(k, "disconnects");
            err = parse_counts_object(s, &i, is_disconnects ? &t : NULL, &key);
            if (err) goto done;
        } else {
            uint64_t v;
            err = parse_uint(s, &i, &v);
            if (err) goto done;
            uint64_t *field = totals_counter(&t, k);
            if (field) *field = v;
        }
        skip_ws(s, &i);
        if (i < s.len && s.ptr[i] == ',') {
            i++;
            continue;
        }
        if (i < s.len && s.ptr[i] == '}') {
            i++;
            break;
        }
        err = "expected , or }";
        goto done;
    }
end:
    skip_ws(s, &i);
    if (i != s.len) err = "unexpected text after the object";
done:
    abuf_free(&key);
    if (err == NULL) *out = t;
    return err;
}

/* ---------------------------------------------------------------------------------------
 * Per-client records
 * ------------------------------------------------------------------------------------- */

void audit_count(audit_totals_t *t, audit_client_t *c, audit_event_t ev, uint64_t bytes) {
    switch (ev) {
    case AUDIT_CONNECTED:
        t->connects++;
        if (c) c->connects++;
        break;
    case AUDIT_SUBSCRIBED:
        t->subscriptions++;
        if (c) c->subscriptions++;
        break;
    case AUDIT_PUBLISHED:
        t->published++;
        t->bytes += bytes;
        if (c) {
            c->published++;
            c->bytes += bytes;
        }
        break;
    case AUDIT_DROPPED:
        t->dropped++;
        if (c) c->dropped++;
        break;
    }
}

static void put_le64(uint8_t *p, uint64_t v) {
    for (int k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (8 * k));
}

static uint64_t get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = (v << 8) | p[k];
    return v;
}

void audit_client_encode(const audit_client_t *c, uint8_t out[AUDIT_RECORD_LEN]) {
    out[0] = AUDIT_RECORD_VERSION;
    put_le64(out + 1, c->connects);
    put_le64(out + 9, c->published);
    put_le64(out + 17, c->bytes);
    put_le64(out + 25, c->subscriptions);
    put_le64(out + 33, c->dropped);
}

bool audit_client_decode(const uint8_t *bytes, size_t len, audit_client_t *c) {
    if (len != AUDIT_RECORD_LEN || bytes[0] != AUDIT_RECORD_VERSION) return false;
    c->connects = get_le64(bytes + 1);
    c->published = get_le64(bytes + 9);
    c->bytes = get_le64(bytes + 17);
    c->subscriptions = get_le64(bytes + 25);
    c->dropped = get_le64(bytes + 33);
    return true;
}

void audit_client_key(abuf_t *out, astr_t client_id) {
    out->len = 0;
    abuf_put(out, "c/", 2);
    abuf_put(out, client_id.ptr, client_id.len);
}

/* ---------------------------------------------------------------------------------------
 * Reloads
 * ------------------------------------------------------------------------------------- */

bool audit_reload_duplicate(const audit_reload_t *last, uint64_t generation, uint64_t now_ms) {
    if (last->generation == 0 || generation != last->generation) return false;
    uint64_t apart = now_ms >= last->at_ms ? now_ms - last->at_ms : last->at_ms - now_ms;
    return apart < AUDIT_RELOAD_DUPLICATE_MS;
}

void audit_reload_encode(const audit_reload_t *r, uint8_t out[AUDIT_RELOAD_LEN]) {
    put_le64(out, r->generation);
    put_le64(out + 8, r->at_ms);
}

bool audit_reload_decode(const uint8_t *bytes, size_t len, audit_reload_t *r) {
    if (len != AUDIT_RELOAD_LEN) return false;
    r->generation = get_le64(bytes);
    r->at_ms = get_le64(bytes + 8);
    return true;
}

/* ---------------------------------------------------------------------------------------
 * In-memory client table
 * ------------------------------------------------------------------------------------- */

void audit_table_init(audit_table_t *t, size_t max) {
    t->slots = NULL;
    t->cap = 0;
    t->count = 0;
    t->max = max;
}

void audit_table_free(audit_table_t *t) {
    for (size_t k = 0; k < t->cap; k++) free(t->slots[k].id);
    free(t->slots);
    audit_table_init(t, t->max);
}

static uint64_t hash_id(astr_t id) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t k = 0; k < id.len; k++) {
        h ^= (unsigned char)id.ptr[k];
        h *= 1099511628211ull;
    }
    return h;
}

/* The slot holding `id`, or the empty slot where it goes (cap is a power of two, never full). */
static audit_entry_t *table_find(audit_entry_t *slots, size_t cap, astr_t id) {
    size_t k = (size_t)hash_id(id) & (cap - 1);
    for (;;) {
        audit_entry_t *e = &slots[k];
        if (e->id == NULL) return e;
        if (e->len == id.len && (id.len == 0 || memcmp(e->id, id.ptr, id.len) == 0)) return e;
        k = (k + 1) & (cap - 1);
    }
}

static bool table_grow(audit_table_t *t) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    audit_entry_t *slots = calloc(cap, sizeof *slots);
    if (slots == NULL) return false;
    for (size_t k = 0; k < t->cap; k++) {
        audit_entry_t *e = &t->slots[k];
        if (e->id != NULL) *table_find(slots, cap, (astr_t){e->id, e->len}) = *e;
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return true;
}

audit_client_t *audit_table_get(audit_table_t *t, astr_t id, bool *created) {
    *created = false;
    if (t->cap) {
        audit_entry_t *e = table_find(t->slots, t->cap, id);
        if (e->id != NULL) return &e->c;
    }
    if (t->count >= t->max) return NULL;
    /* At most 3/4 full, so that probing always ends. */
    if ((t->count + 1) * 4 > t->cap * 3 && !table_grow(t)) return NULL;
    audit_entry_t *e = table_find(t->slots, t->cap, id);
    char *copy = malloc(id.len + 1);
    if (copy == NULL) return NULL;
    if (id.len) memcpy(copy, id.ptr, id.len);
    copy[id.len] = '\0';
    e->id = copy;
    e->len = id.len;
    memset(&e->c, 0, sizeof e->c);
    t->count++;
    *created = true;
    return &e->c;
}

/* ---------------------------------------------------------------------------------------
 * Config
 * ------------------------------------------------------------------------------------- */

void audit_prefixes_free(audit_prefixes_t *p) {
    for (size_t k = 0; k < p->count; k++) free(p->items[k]);
    free(p->items);
    free(p->lens);
    p->items = NULL;
    p->lens = NULL;
    p->count = 0;
}

/* Moves `item`'s bytes into the list (NUL-terminated copy); false when out of memory. */
static bool push_prefix(audit_prefixes_t *p, const abuf_t *item) {
    char *copy = malloc(item->len + 1);
    if (copy == NULL) return false;
    if (item->len) memcpy(copy, item->ptr, item->len);
    copy[item->len] = '\0';
    char **items = realloc(p->items, (p->count + 1) * sizeof *items);
    if (items == NULL) {
        free(copy);
        return false;
    }
    p->items = items;
    size_t *lens = realloc(p->lens, (p->count + 1) * sizeof *lens);
    if (lens == NULL) {
        free(copy);
        return false;
    }
    p->lens = lens;
    p->items[p->count] = copy;
    p->lens[p->count] = item->len;
    p->count++;
    return true;
}

const char *audit_parse_prefixes(astr_t json, audit_prefixes_t *out) {
    audit_prefixes_t list = {NULL, NULL, 0};
    abuf_t item;
    abuf_init(&item);
    const char *err = NULL;
    size_t i = 0;
    skip_ws(json, &i);
    if (i == json.len) {
        err = "empty (give a JSON list of client-id prefixes)";
        goto fail;
    }
    if (json.ptr[i] == '"') {
        /* One JSON string: a list of one. */
        err = parse_json_string(json, &i, &item);
        if (err != NULL) goto fail;
        if (!push_prefix(&list, &item)) goto oom;
        goto end;
    }
    if (json.ptr[i] != '[') {
        /* A YAML scalar arrives as its bare text: one prefix. */
        abuf_put(&item, json.ptr, json.len);
        if (item.failed || !push_prefix(&list, &item)) goto oom;
        goto check;
    }
    i++;
    skip_ws(json, &i);
    if (i < json.len && json.ptr[i] == ']') {
        i++;
        goto end;
    }
    for (;;) {
        skip_ws(json, &i);
        if (i >= json.len || json.ptr[i] != '"') {
            err = "expected a JSON list of strings";
            goto fail;
        }
        err = parse_json_string(json, &i, &item);
        if (err != NULL) goto fail;
        if (!push_prefix(&list, &item)) goto oom;
        skip_ws(json, &i);
        if (i < json.len && json.ptr[i] == ',') {
            i++;
            continue;
        }
        if (i < json.len && json.ptr[i] == ']') {
            i++;
            break;
        }
        err = "expected , or ] in the list";
        goto fail;
    }
end:
    skip_ws(json, &i);
    if (i != json.len) {
        err = "unexpected text after the list";
        goto fail;
    }
check:
    for (size_t k = 0; k < list.count; k++) {
        if (list.lens[k] == 0) {
            err = "an empty prefix would exclude every client";
            goto fail;
        }
    }
    abuf_free(&item);
    audit_prefixes_free(out);
    *out = list;
    return NULL;
oom:
    err = "out of memory";
fail:
    abuf_free(&item);
    audit_prefixes_free(&list);
    return err;
}

bool audit_excluded(const audit_prefixes_t *p, astr_t id) {
    for (size_t k = 0; k < p->count; k++) {
        if (p->lens[k] <= id.len && memcmp(p->items[k], id.ptr, p->lens[k]) == 0) return true;
    }
    return false;
}

const char *audit_check_topic(astr_t topic) {
    if (topic.len == 0) return "must not be empty";
    if (topic.len > 65535) return "longer than 65535 bytes";
    for (size_t k = 0; k < topic.len; k++) {
        char c = topic.ptr[k];
        if (c == '+' || c == '#') return "must be a topic name, without the wildcards + and #";
        if (c == '\0') return "must not contain NUL";
    }
    return NULL;
}
