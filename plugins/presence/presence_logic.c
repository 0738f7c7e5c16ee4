/*
 * presence logic (see presence_logic.h): JSON escaping, payloads, topics, the exclusion list
 * and config checks, free of Wasm types so that test_presence.c runs them natively.
 */
#include "presence_logic.h"

#include <stdlib.h>
#include <string.h>

pstr_t pstr(const char *s) {
    return (pstr_t){s, strlen(s)};
}

/* ---------------------------------------------------------------------------------------
 * Buffer
 * ------------------------------------------------------------------------------------- */

void pbuf_init(pbuf_t *b) {
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
    b->failed = false;
}

void pbuf_free(pbuf_t *b) {
    free(b->ptr);
    pbuf_init(b);
}

static bool pbuf_reserve(pbuf_t *b, size_t extra) {
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

void pbuf_put(pbuf_t *b, const char *bytes, size_t len) {
    if (len == 0 || !pbuf_reserve(b, len)) return;
    memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
}

void pbuf_puts(pbuf_t *b, const char *s) {
    pbuf_put(b, s, strlen(s));
}

void pbuf_put_u64(pbuf_t *b, uint64_t n) {
    char digits[20];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n != 0);
    pbuf_put(b, digits + i, sizeof digits - i);
}

/* ---------------------------------------------------------------------------------------
 * JSON and payloads
 * ------------------------------------------------------------------------------------- */

void presence_json_string(pbuf_t *out, pstr_t s) {
    static const char hex[] = "0123456789abcdef";
    pbuf_put(out, "\"", 1);
    size_t run = 0; /* start of the pending run of bytes that need no escape */
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
            if (c < 0x20) {
                u[0] = '\\';
                u[1] = 'u';
                u[2] = '0';
                u[3] = '0';
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
            }
        }
        if (esc == NULL && c >= 0x20) continue;
        pbuf_put(out, s.ptr + run, i - run);
        if (esc != NULL) {
            pbuf_puts(out, esc);
        } else {
            pbuf_put(out, u, sizeof u);
        }
        run = i + 1;
    }
    pbuf_put(out, s.ptr + run, s.len - run);
    pbuf_put(out, "\"", 1);
}

const char *presence_protocol_name(presence_protocol_t p) {
    switch (p) {
    case PRESENCE_MQTT31: return "3.1";
    case PRESENCE_MQTT311: return "3.1.1";
    case PRESENCE_MQTT5: return "5";
    }
    return "unknown";
}

void presence_online_payload(pbuf_t *out, const presence_client_t *c, uint64_t since_ms) {
    pbuf_puts(out, "{\"client_id\":");
    presence_json_string(out, c->client_id);
    pbuf_puts(out, ",\"online\":true,\"username\":");
    if (c->has_username) {
        presence_json_string(out, c->username);
    } else {
        pbuf_puts(out, "null");
    }
    pbuf_puts(out, ",\"peer\":");
    presence_json_string(out, c->peer);
    pbuf_puts(out, ",\"protocol\":");
    presence_json_string(out, pstr(presence_protocol_name(c->protocol)));
    pbuf_puts(out, ",\"since\":");
    pbuf_put_u64(out, since_ms);
    pbuf_puts(out, "}");
}

void presence_offline_payload(pbuf_t *out, pstr_t client_id, pstr_t reason, uint64_t since_ms) {
    pbuf_puts(out, "{\"client_id\":");
    presence_json_string(out, client_id);
    pbuf_puts(out, ",\"online\":false,\"reason\":");
    presence_json_string(out, reason);
    pbuf_puts(out, ",\"since\":");
    pbuf_put_u64(out, since_ms);
    pbuf_puts(out, "}");
}

/* ---------------------------------------------------------------------------------------
 * Topics
 * ------------------------------------------------------------------------------------- */

bool presence_client_id_ok(pstr_t id) {
    if (id.len == 0) return false;
    for (size_t i = 0; i < id.len; i++) {
        char c = id.ptr[i];
        if (c == '+' || c == '#' || c == '\0') return false;
    }
    return true;
}

bool presence_topic(pbuf_t *out, pstr_t prefix, pstr_t id) {
    if (!presence_client_id_ok(id)) return false;
    pbuf_put(out, prefix.ptr, prefix.len);
    pbuf_put(out, "/", 1);
    pbuf_put(out, id.ptr, id.len);
    return true;
}

const char *presence_check_prefix(pstr_t text, pstr_t *trimmed) {
    size_t len = text.len;
    while (len > 0 && text.ptr[len - 1] == '/') len--;
    if (len == 0) return "prefix must not be empty (nor only slashes)";
    for (size_t i = 0; i < len; i++) {
        char c = text.ptr[i];
        if (c == '+' || c == '#') return "prefix must not contain the wildcards + or #";
        if (c == '\0') return "prefix must not contain NUL";
    }
    if (len > 60000) return "prefix is too long for a topic";
    trimmed->ptr = text.ptr;
    trimmed->len = len;
    return NULL;
}

const char *presence_parse_bool(pstr_t text, bool *out) {
    if (text.len == 4 && memcmp(text.ptr, "true", 4) == 0) {
        *out = true;
        return NULL;
    }
    if (text.len == 5 && memcmp(text.ptr, "false", 5) == 0) {
        *out = false;
        return NULL;
    }
    return "must be true or false";
}

/* ---------------------------------------------------------------------------------------
 * Exclusion list
 * ------------------------------------------------------------------------------------- */

void presence_prefixes_free(presence_prefixes_t *p) {
    for (size_t i = 0; i < p->count; i++) free(p->items[i]);
    free(p->items);
    free(p->lens);
    p->items = NULL;
    p->lens = NULL;
    p->count = 0;
}

static bool push_prefix(presence_prefixes_t *p, pbuf_t *item) {
    char **items = realloc(p->items, (p->count + 1) * sizeof *items);
    if (items == NULL) return false;
    p->items = items;
    size_t *lens = realloc(p->lens, (p->count + 1) * sizeof *lens);
    if (lens == NULL) return false;
    p->lens = lens;
    p->items[p->count] = item->ptr; /* ownership moves into the list */
    p->lens[p->count] = item->len;
    p->count++;
    pbuf_init(item);
    return true;
}

static void skip_ws(pstr_t s, size_t *i) {
    while (*i < s.len && (s.ptr[*i] == ' ' || s.ptr[*i] == '\t' || s.ptr[*i] == '\n' || s.ptr[*i] == '\r'))
        (*i)++;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads 4 hex digits at s[*i]; -1 when they are not there. */
static long read_hex4(pstr_t s, size_t *i) {
    if (s.len - *i < 4) return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hex_value(s.ptr[*i + k]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    *i += 4;
    return v;
}

static void put_utf8(pbuf_t *b, unsigned long cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    pbuf_put(b, u, n);
}

/* Parses the JSON string starting at the quote s[*i] into *out (unescaped). */
static const char *parse_json_string(pstr_t s, size_t *i, pbuf_t *out) {
    (*i)++; /* opening quote */
    while (*i < s.len) {
        unsigned char c = (unsigned char)s.ptr[*i];
        if (c == '"') {
            (*i)++;
            return out->failed ? "out of memory" : NULL;
        }
        if (c < 0x20) return "exclude: control character inside a string";
        if (c != '\\') {
            pbuf_put(out, (const char *)&s.ptr[*i], 1);
            (*i)++;
            continue;
        }
        (*i)++;
        if (*i >= s.len) break;
        char e = s.ptr[(*i)++];
        switch (e) {
        case '"': pbuf_put(out, "\"", 1); break;
        case '\\': pbuf_put(out, "\\", 1); break;
        case '/': pbuf_put(out, "/", 1); break;
        case 'b': pbuf_put(out, "\b", 1); break;
        case 'f': pbuf_put(out, "\f", 1); break;
        case 'n': pbuf_put(out, "\n", 1); break;
        case 'r': pbuf_put(out, "\r", 1); break;
        case 't': pbuf_put(out, "\t", 1); break;
        case 'u': {
            long cp = read_hex4(s, i);
            if (cp < 0) return "exclude: bad \\u escape";
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* A high surrogate must be followed by an escaped low one. */
                if (s.len - *i < 2 || s.ptr[*i] != '\\' || s.ptr[*i + 1] != 'u')
                    return "exclude: unpaired surrogate in \\u escape";
                *i += 2;
                long lo = read_hex4(s, i);
                if (lo < 0xDC00 || lo > 0xDFFF) return "exclude: unpaired surrogate in \\u escape";
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return "exclude: unpaired surrogate in \\u escape";
            }
            put_utf8(out, (unsigned long)cp);
            break;
        }
        default: return "exclude: unknown escape in a string";
        }
    }
    return "exclude: unterminated string";
}

const char *presence_parse_prefixes(pstr_t json, presence_prefixes_t *out) {
    presence_prefixes_t list = {NULL, NULL, 0};
    pbuf_t item;
    pbuf_init(&item);
    const char *err = NULL;
    size_t i = 0;
    skip_ws(json, &i);
    if (i == json.len) {
        err = "exclude: empty (give a JSON list of client-id prefixes)";
        goto fail;
    }
    if (json.ptr[i] == '"') {
        /* One JSON string: a list of one. */
        err = parse_json_string(json, &i, &item);
        if (err != NULL) goto fail;
        if (!push_prefix(&list, &item)) {
            err = "out of memory";
            goto fail;
        }
        goto end;
    }
    if (json.ptr[i] != '[') {
        /* A YAML scalar arrives as its bare text: one prefix. */
        pbuf_put(&item, json.ptr, json.len);
        if (item.failed || !push_prefix(&list, &item)) {
            err = "out of memory";
            goto fail;
        }
        goto done;
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
            err = "exclude: expected a JSON list of strings";
            goto fail;
        }
        err = parse_json_string(json, &i, &item);
        if (err != NULL) goto fail;
        if (!push_prefix(&list, &item)) {
            err = "out of memory";
            goto fail;
        }
        skip_ws(json, &i);
        if (i < json.len && json.ptr[i] == ',') {
            i++;
            continue;
        }
        if (i < json.len && json.ptr[i] == ']') {
            i++;
            break;
        }
        err = "exclude: expected , or ] in the list";
        goto fail;
    }
end:
    skip_ws(json, &i);
    if (i != json.len) {
        err = "exclude: unexpected text after the list";
        goto fail;
    }
done:
    for (size_t k = 0; k < list.count; k++) {
        if (list.lens[k] == 0) {
            err = "exclude: an empty prefix would exclude every client";
            goto fail;
        }
    }
    presence_prefixes_free(out);
    *out = list;
    return NULL;
fail:
    pbuf_free(&item);
    presence_prefixes_free(&list);
    return err;
}

bool presence_excluded(const presence_prefixes_t *p, pstr_t id) {
    for (size_t k = 0; k < p->count; k++) {
        if (p->lens[k] <= id.len && memcmp(id.ptr, p->items[k], p->lens[k]) == 0) return true;
    }
    return false;
}

bool presence_reports_disconnect(pstr_t reason) {
    static const char taken[] = "taken over";
    if (reason.len != sizeof taken - 1) return true;
    for (size_t i = 0; i < reason.len; i++) {
        char c = reason.ptr[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c == '_' || c == '-') c = ' ';
        if (c != taken[i]) return true;
    }
    return false;
}
