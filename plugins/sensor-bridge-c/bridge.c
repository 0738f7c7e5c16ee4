/*
 * The rule logic of the C sensor bridge (see bridge.h): a port of
 * ../sensor-bridge/lib/bridge.js, kept in the same order so that the two can be read side by
 * side. Where the JavaScript version relies on a JavaScript behaviour (JSON.parse,
 * Number → string, String.prototype.trim, UTF-16 string lengths), this file reproduces it.
 */
#include "bridge.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * Memory: arenas and a growable buffer. */

struct sb_chunk {
    sb_chunk *next;
    size_t cap;
    size_t used;
};

#define CHUNK_HEADER ((sizeof(sb_chunk) + 15) & ~(size_t)15)
#define ARENA_MIN_CHUNK ((size_t)16384)
#define ARENA_MAX_KEPT ((size_t)4 << 20)

static unsigned char *chunk_data(sb_chunk *c) { return (unsigned char *)c + CHUNK_HEADER; }

static sb_chunk *chunk_new(size_t cap) {
    sb_chunk *c = malloc(CHUNK_HEADER + cap);
    if (c == NULL) abort();
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    return c;
}

void *sb_arena_alloc(sb_arena *a, size_t n) {
    n = (n + 7) & ~(size_t)7;
    if (n == 0) n = 8;
    sb_chunk *c = a->cur;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = ARENA_MIN_CHUNK;
        if (c != NULL && c->cap * 2 > cap) cap = c->cap * 2;
        if (cap < n) cap = n;
        sb_chunk *nc = chunk_new(cap);
        if (c == NULL) a->first = nc;
        else c->next = nc;
        a->cur = c = nc;
    }
    void *p = chunk_data(c) + c->used;
    c->used += n;
    a->total += n;
    return p;
}

void sb_arena_reset(sb_arena *a) {
    if (a->first == NULL) return;
    if (a->first->next != NULL) {
        /* More than one chunk was needed: keep one chunk as large as the peak (bounded). */
        size_t want = a->total > ARENA_MAX_KEPT ? ARENA_MAX_KEPT : a->total;
        sb_chunk *c = a->first;
        while (c != NULL) {
            sb_chunk *next = c->next;
            free(c);
            c = next;
        }
        a->first = chunk_new(want < ARENA_MIN_CHUNK ? ARENA_MIN_CHUNK : want);
    }
    a->first->used = 0;
    a->cur = a->first;
    a->total = 0;
}

void sb_arena_free(sb_arena *a) {
    sb_chunk *c = a->first;
    while (c != NULL) {
        sb_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->first = a->cur = NULL;
    a->total = 0;
}

static sb_str arena_dup(sb_arena *a, const char *p, size_t n) {
    char *q = sb_arena_alloc(a, n);
    if (n > 0) memcpy(q, p, n);
    return (sb_str){q, n};
}

/** A growable byte buffer (malloc'ed). */
typedef struct {
    char *p;
    size_t len;
    size_t cap;
} buf;

static void buf_reserve(buf *b, size_t extra) {
    if (b->cap - b->len >= extra) return;
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap - b->len < extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) abort();
    b->p = p;
    b->cap = cap;
}

static void buf_put(buf *b, const void *s, size_t n) {
    if (n == 0) return;
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_putc(buf *b, char c) {
    buf_reserve(b, 1);
    b->p[b->len++] = c;
}

static void buf_str(buf *b, sb_str s) { buf_put(b, s.ptr, s.len); }
static void buf_cstr(buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_u64(buf *b, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    buf_reserve(b, (size_t)n);
    while (n > 0) b->p[b->len++] = tmp[--n];
}

static sb_str buf_to_arena(const buf *b, sb_arena *a) { return arena_dup(a, b->p, b->len); }

static sb_str S(const char *s) { return (sb_str){s, strlen(s)}; }
static bool str_eq(sb_str a, sb_str b) { return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0); }
static bool str_is(sb_str a, const char *b) { return str_eq(a, S(b)); }

static const char HEX[] = "0123456789abcdef";

/* JSON.stringify of a string. Lone surrogates (held as 3-byte WTF-8 sequences ED A0..BF xx)
 * become `\udxxx` escapes, as in JavaScript. */
static void buf_json(buf *b, sb_str s) {
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t n = s.len;
    buf_reserve(b, n + 2);
    b->p[b->len++] = '"';
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0xED) continue;
        if (c == 0xED && !(i + 2 < n && p[i + 1] >= 0xA0)) continue;
        buf_put(b, p + run, i - run);
        switch (c) {
        case '"': buf_put(b, "\\\"", 2); break;
        case '\\': buf_put(b, "\\\\", 2); break;
        case '\b': buf_put(b, "\\b", 2); break;
        case '\f': buf_put(b, "\\f", 2); break;
        case '\n': buf_put(b, "\\n", 2); break;
        case '\r': buf_put(b, "\\r", 2); break;
        case '\t': buf_put(b, "\\t", 2); break;
        case 0xED: {
            unsigned cp = 0xD000u | ((unsigned)(p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
            char e[6] = {'\\', 'u', HEX[(cp >> 12) & 15], HEX[(cp >> 8) & 15], HEX[(cp >> 4) & 15], HEX[cp & 15]};
            buf_put(b, e, 6);
            i += 2;
            break;
        }
        default: {
            char e[6] = {'\\', 'u', '0', '0', HEX[c >> 4], HEX[c & 15]};
            buf_put(b, e, 6);
        }
        }
        run = i + 1;
    }
    buf_put(b, p + run, n - run);
    buf_putc(b, '"');
}

sb_str sb_json_quote(sb_arena *a, sb_str s) {
    buf b = {0};
    buf_json(&b, s);
    sb_str out = buf_to_arena(&b, a);
    free(b.p);
    return out;
}

/* ------------------------------------------------------------------------------------------
 * JavaScript string behaviours: trim, UTF-16 lengths, UTF-8 decoding. */

/* Length in bytes of a JavaScript whitespace or line terminator at the start of `p`, else 0
 * (the set String.prototype.trim removes). */
static size_t js_space_at(const unsigned char *p, size_t n) {
    unsigned char c = p[0];
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return 1;
    if (c < 0xC2) return 0;
    if (c == 0xC2) return n >= 2 && p[1] == 0xA0 ? 2 : 0;
    if (n < 3) return 0;
    if (c == 0xE1) return p[1] == 0x9A && p[2] == 0x80 ? 3 : 0;
    if (c == 0xE2 && p[1] == 0x80) return (p[2] <= 0x8A || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF) ? 3 : 0;
    if (c == 0xE2) return p[1] == 0x81 && p[2] == 0x9F ? 3 : 0;
    if (c == 0xE3) return p[1] == 0x80 && p[2] == 0x80 ? 3 : 0;
    if (c == 0xEF) return p[1] == 0xBB && p[2] == 0xBF ? 3 : 0;
    return 0;
}

static sb_str js_trim(sb_str s) {
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t start = 0, end = s.len;
    while (start < end) {
        size_t k = js_space_at(p + start, end - start);
        if (k == 0) break;
        start += k;
    }
    while (end > start) {
        unsigned char c = p[end - 1];
        if (c == ' ' || (c >= 0x09 && c <= 0x0D)) {
            end--;
            continue;
        }
        if (end - start >= 2 && js_space_at(p + end - 2, 2) == 2) {
            end -= 2;
            continue;
        }
        if (end - start >= 3 && js_space_at(p + end - 3, 3) == 3) {
            end -= 3;
            continue;
        }
        break;
    }
    return (sb_str){s.ptr + start, end - start};
}

static bool js_is_blank(sb_str s) { return js_trim(s).len == 0; }

/* Byte length of the UTF-8 (or WTF-8) sequence starting with `c`. */
static size_t seq_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* The first `units` UTF-16 code units of `s` (which is valid UTF-8 or WTF-8), as JavaScript's
 * `slice(0, units)`: a 4-byte character cut in half leaves its high surrogate. Sets
 * `*cut` when something was left off. */
static sb_str utf16_prefix(sb_arena *a, sb_str s, size_t units, bool *cut) {
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0, u = 0;
    *cut = false;
    while (i < s.len) {
        size_t k = seq_len(p[i]);
        if (i + k > s.len) k = s.len - i;
        size_t w = k == 4 ? 2 : 1;
        if (u + w > units) {
            *cut = true;
            if (u < units) { /* half of a surrogate pair */
                unsigned cp = ((unsigned)(p[i] & 7) << 18) | ((unsigned)(p[i + 1] & 0x3F) << 12) |
                              ((unsigned)(p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
                unsigned hi = 0xD800 + ((cp - 0x10000) >> 10);
                char *q = sb_arena_alloc(a, i + 3);
                memcpy(q, p, i);
                q[i] = (char)(0xE0 | (hi >> 12));
                q[i + 1] = (char)(0x80 | ((hi >> 6) & 0x3F));
                q[i + 2] = (char)(0x80 | (hi & 0x3F));
                return (sb_str){q, i + 3};
            }
            return (sb_str){s.ptr, i};
        }
        u += w;
        i += k;
    }
    return s;
}

/* truncate(s, n) of the JavaScript version: `s.slice(0, n) + '…'` when longer. */
static sb_str js_truncate(sb_arena *a, sb_str s, size_t n) {
    bool cut;
    sb_str t = utf16_prefix(a, s, n, &cut);
    if (!cut) return s;
    char *q = sb_arena_alloc(a, t.len + 3);
    memcpy(q, t.ptr, t.len);
    memcpy(q + t.len, "\xE2\x80\xA6", 3);
    return (sb_str){q, t.len + 3};
}

bool sb_utf8_valid(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII eight bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) return false;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (p[i + 1] & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80) return false;
            if (c == 0xE0 && p[i + 1] < 0xA0) return false; /* overlong */
            if (c == 0xED && p[i + 1] >= 0xA0) return false; /* surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (p[i + 1] & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80 || (p[i + 3] & 0xC0) != 0x80)
                return false;
            if (c == 0xF0 && p[i + 1] < 0x90) return false; /* overlong */
            if (c == 0xF4 && p[i + 1] >= 0x90) return false; /* above U+10FFFF */
            i += 4;
        } else {
            return false;
        }
    }
    return true;
}

sb_str sb_utf8_lossy(sb_arena *a, const uint8_t *p, size_t n) {
    /* At most three output bytes (U+FFFD) per input byte. */
    char *out = sb_arena_alloc(a, n * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char b = p[i];
        size_t k;
        unsigned cp;
        if (b < 0x80) {
            out[o++] = (char)b;
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            cp = b & 0x1F;
            k = 2;
        } else if ((b & 0xF0) == 0xE0) {
            cp = b & 0x0F;
            k = 3;
        } else if ((b & 0xF8) == 0xF0) {
            cp = b & 0x07;
            k = 4;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
            continue;
        }
        bool good = i + k <= n;
        for (size_t j = 1; good && j < k; j++) {
            unsigned char c = p[i + j];
            if ((c & 0xC0) != 0x80) good = false;
            else cp = (cp << 6) | (c & 0x3F);
        }
        static const unsigned MIN[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (!good || cp < MIN[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
            continue;
        }
        memcpy(out + o, p + i, k);
        o += k;
        i += k;
    }
    return (sb_str){out, o};
}

/* ------------------------------------------------------------------------------------------
 * Numbers, as JavaScript parses, prints and rounds them. */

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Decimal text of `v` (at most 20 bytes); returns the length. (No printf: wasi-libc's pulls
 * in stdio and with it WASI imports the broker does not provide.) */
static size_t fmt_u64(char *out, uint64_t v) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

static size_t fmt_i64(char *out, int64_t v) {
    if (v < 0) {
        out[0] = '-';
        return 1 + fmt_u64(out + 1, (uint64_t)(-(v + 1)) + 1);
    }
    return fmt_u64(out, (uint64_t)v);
}

/* strtod of `digits` × 10^exp10 (digits: ASCII, no sign). */
static double digits_to_double(const char *digits, size_t nd, long exp10) {
    char tmp[64];
    if (nd > 40) nd = 40; /* callers pass at most 17 */
    memcpy(tmp, digits, nd);
    tmp[nd] = 'e';
    size_t k = nd + 1 + fmt_i64(tmp + nd + 1, exp10);
    tmp[k] = 0;
    return strtod(tmp, NULL);
}

/* The exact decimal expansion of a positive finite double: its digits without leading zeros
 * (at most 770) and the point (value = 0.digits × 10^point). Big-integer arithmetic in base
 * 10^9: the mantissa times 2^e, or times 5^-e with the point moved. */
static size_t exact_digits(double a, char *out, int *point) {
    uint64_t bits;
    memcpy(&bits, &a, 8);
    int e = (int)((bits >> 52) & 0x7FF);
    uint64_t m = bits & ((1ull << 52) - 1);
    if (e == 0) e = 1;
    else m |= 1ull << 52;
    e -= 1075; /* a = m × 2^e */
    uint32_t limb[100]; /* little-endian, base 10^9 */
    size_t nl = 0;
    while (m != 0) {
        limb[nl++] = (uint32_t)(m % 1000000000u);
        m /= 1000000000u;
    }
    int k = e >= 0 ? e : -e;
    uint32_t step = e >= 0 ? 29 : 13; /* multiply by 2^29 or 5^13 at a time */
    while (k > 0) {
        uint32_t s = (uint32_t)k < step ? (uint32_t)k : step;
        uint64_t mul = 1;
        for (uint32_t i = 0; i < s; i++) mul *= e >= 0 ? 2 : 5;
        uint64_t carry = 0;
        for (size_t i = 0; i < nl; i++) {
            uint64_t x = (uint64_t)limb[i] * mul + carry;
            limb[i] = (uint32_t)(x % 1000000000u);
            carry = x / 1000000000u;
        }
        while (carry != 0) {
            limb[nl++] = (uint32_t)(carry % 1000000000u);
            carry /= 1000000000u;
        }
        k -= (int)s;
    }
    size_t n = 0;
    for (size_t i = nl; i-- > 0;) {
        char tmp[9];
        uint32_t v = limb[i];
        for (int j = 8; j >= 0; j--) {
            tmp[j] = (char)('0' + v % 10);
            v /= 10;
        }
        for (int j = 0; j < 9; j++)
            if (n > 0 || tmp[j] != '0') out[n++] = tmp[j];
    }
    *point = (int)n + (e < 0 ? e : 0);
    return n;
}

static void num_zero(sb_num *n, bool neg) {
    memset(n, 0, sizeof *n);
    n->neg = neg;
    n->v = neg ? -0.0 : 0.0;
}

static void num_special(sb_num *n, double v) {
    memset(n, 0, sizeof *n);
    n->v = v;
    n->kind = isnan(v) ? SB_NUM_NAN : SB_NUM_INF;
    n->neg = !isnan(v) && v < 0;
}

void sb_num_from_double(double v, sb_num *n) {
    if (isnan(v) || isinf(v)) {
        num_special(n, v);
        return;
    }
    if (v == 0) {
        num_zero(n, signbit(v) != 0);
        return;
    }
    double a = fabs(v);
    char exact[800];
    int point;
    size_t len = exact_digits(a, exact, &point);
    /* The shortest digits that read back as the same double: the correctly rounded (half to
     * even, as printf's %.*e) prefix of p digits, for p = 1, 2, ... */
    char d[20];
    int nd = 0, dpoint = point;
    for (int p = 1; p <= 17; p++) {
        size_t take = (size_t)p < len ? (size_t)p : len;
        memcpy(d, exact, take);
        for (size_t i = take; i < (size_t)p; i++) d[i] = '0';
        dpoint = point;
        if ((size_t)p < len) {
            bool up = exact[p] > '5';
            if (exact[p] == '5') {
                bool rest = false;
                for (size_t i = (size_t)p + 1; i < len; i++)
                    if (exact[i] != '0') rest = true;
                up = rest || ((d[p - 1] - '0') & 1);
            }
            if (up) {
                int i = p - 1;
                while (i >= 0 && d[i] == '9') d[i--] = '0';
                if (i >= 0) d[i]++;
                else {
                    d[0] = '1'; /* 99.. → 100..: the rest are zeros already */
                    dpoint++;
                }
            }
        }
        nd = p;
        if (digits_to_double(d, (size_t)p, dpoint - p) == a) break;
    }
    while (nd > 1 && d[nd - 1] == '0') nd--;
    memset(n, 0, sizeof *n);
    n->v = v;
    n->neg = v < 0;
    memcpy(n->d, d, (size_t)nd);
    n->nd = nd;
    n->point = dpoint;
}

/* A number from text of the grammar `[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?` (which the JSON
 * number grammar is part of), as JavaScript's Number() reads it. */
static void num_from_text(const char *s, size_t len, sb_num *n) {
    size_t i = 0;
    bool neg = false;
    if (i < len && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    long first_nz = -1, last_nz = -1, count = 0, nint = 0;
    bool frac = false;
    size_t digits_start = i;
    for (; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            frac = true;
            continue;
        }
        if (c < '0' || c > '9') break;
        if (c != '0') {
            if (first_nz < 0) first_nz = count;
            last_nz = count;
        }
        count++;
        if (!frac) nint++;
    }
    long exp = 0;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = false;
        if (i < len && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
        for (; i < len; i++) {
            if (exp < 100000) exp = exp * 10 + (s[i] - '0');
        }
        if (eneg) exp = -exp;
    }
    if (first_nz < 0) {
        num_zero(n, neg);
        return;
    }
    long nd = last_nz - first_nz + 1;
    long point = nint - first_nz + exp;
    if (nd <= 15 && point <= 308 && point >= -290) {
        memset(n, 0, sizeof *n);
        n->neg = neg;
        n->nd = (int)nd;
        n->point = (int)point;
        long k = 0;
        uint64_t m = 0;
        for (size_t j = digits_start; k <= last_nz; j++) {
            char c = s[j];
            if (c == '.') continue;
            if (k >= first_nz) {
                n->d[k - first_nz] = c;
                m = m * 10 + (uint64_t)(c - '0');
            }
            k++;
        }
        long scale = point - nd; /* value = m × 10^scale */
        double v;
        if (scale >= 0 && scale <= 22) v = (double)m * POW10[scale];
        else if (scale < 0 && scale >= -22) v = (double)m / POW10[-scale];
        else v = digits_to_double(n->d, (size_t)nd, scale);
        n->v = neg ? -v : v;
        return;
    }
    /* Long or extreme: let strtod round it, then find the shortest digits. */
    char small[64];
    char *tmp = len < sizeof small ? small : malloc(len + 1);
    if (tmp == NULL) abort();
    memcpy(tmp, s, len);
    tmp[len] = 0;
    double v = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    sb_num_from_double(v, n);
}

size_t sb_num_format(const sb_num *n, char *out) {
    if (n->kind == SB_NUM_NAN) {
        memcpy(out, "NaN", 3);
        return 3;
    }
    size_t o = 0;
    if (n->kind == SB_NUM_INF) {
        if (n->neg) out[o++] = '-';
        memcpy(out + o, "Infinity", 8);
        return o + 8;
    }
    if (n->nd == 0) {
        out[0] = '0';
        return 1;
    }
    if (n->neg) out[o++] = '-';
    int k = n->nd, p = n->point;
    if (k <= p && p <= 21) {
        memcpy(out + o, n->d, (size_t)k);
        o += (size_t)k;
        for (int i = k; i < p; i++) out[o++] = '0';
    } else if (0 < p && p <= 21) {
        memcpy(out + o, n->d, (size_t)p);
        o += (size_t)p;
        out[o++] = '.';
        memcpy(out + o, n->d + p, (size_t)(k - p));
        o += (size_t)(k - p);
    } else if (-6 < p && p <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -p; i++) out[o++] = '0';
        memcpy(out + o, n->d, (size_t)k);
        o += (size_t)k;
    } else {
        int e = p - 1;
        out[o++] = n->d[0];
        if (k > 1) {
            out[o++] = '.';
            memcpy(out + o, n->d + 1, (size_t)(k - 1));
            o += (size_t)(k - 1);
        }
        out[o++] = 'e';
        out[o++] = e < 0 ? '-' : '+';
        o += fmt_u64(out + o, (uint64_t)(e < 0 ? -e : e));
    }
    return o;
}

static void buf_num(buf *b, const sb_num *n) {
    buf_reserve(b, 40);
    b->len += sb_num_format(n, b->p + b->len);
}

/* Math.round for x ≥ 0. */
static double js_round(double x) {
    double f = floor(x);
    return x - f >= 0.5 ? f + 1 : f;
}

void sb_round_to(const sb_num *v, int decimals, sb_num *out) {
    if (decimals < 0 || v->kind != SB_NUM_FINITE) {
        *out = *v;
        return;
    }
    double a = fabs(v->v);
    if (a >= 1e15) {
        *out = *v;
        return;
    }
    if (v->nd == 0) {
        num_zero(out, false);
        return;
    }
    sb_num r;
    if (v->point <= -6) {
        /* String(a) has an exponent: Math.round(a * f) / f in binary, as JavaScript does. */
        double f = POW10[decimals];
        sb_num_from_double(js_round(a * f) / f, &r);
    } else if (v->nd <= 15 && v->point + decimals <= 15) {
        /* Exact decimal rounding of the digits, which is what Number(`${a}e${d}`) and
         * Math.round give for this many digits. */
        int q = v->point + decimals; /* digits before the rounding point */
        char m[24];
        int mn = 0;
        if (q > 0) {
            for (int i = 0; i < q; i++) m[mn++] = i < v->nd ? v->d[i] : '0';
        }
        bool up = q >= 0 && q < v->nd && v->d[q] >= '5';
        if (up) {
            int i = mn - 1;
            while (i >= 0 && m[i] == '9') m[i--] = '0';
            if (i >= 0) m[i]++;
            else {
                memmove(m + 1, m, (size_t)mn);
                m[0] = '1';
                mn++;
            }
        }
        int first = 0;
        while (first < mn && m[first] == '0') first++;
        if (first == mn) {
            num_zero(&r, false);
        } else {
            int last = mn - 1;
            while (m[last] == '0') last--;
            memset(&r, 0, sizeof r);
            r.nd = last - first + 1;
            memcpy(r.d, m + first, (size_t)r.nd);
            r.point = (mn - first) - decimals;
            uint64_t iv = 0;
            for (int i = first; i < mn; i++) iv = iv * 10 + (uint64_t)(m[i] - '0');
            r.v = (double)iv / POW10[decimals];
        }
    } else {
        /* Many digits: Number(Math.round(Number(`${a}e${d}`)) + `e-${d}`), step by step. */
        char tmp[80];
        sb_num an = *v;
        an.neg = false;
        size_t n = sb_num_format(&an, tmp);
        tmp[n] = 'e';
        tmp[n + 1 + fmt_u64(tmp + n + 1, (uint64_t)decimals)] = 0;
        double m = js_round(strtod(tmp, NULL));
        if (m >= 1e21) {
            /* String(m) has an exponent, and `1e+21e-2` is not a number. */
            num_special(&r, NAN);
            *out = r;
            return;
        }
        sb_num mn;
        sb_num_from_double(m, &mn);
        n = sb_num_format(&mn, tmp);
        tmp[n] = 'e';
        tmp[n + 1] = '-';
        tmp[n + 2 + fmt_u64(tmp + n + 2, (uint64_t)decimals)] = 0;
        sb_num_from_double(strtod(tmp, NULL), &r);
    }
    if (r.nd == 0 || r.kind != SB_NUM_FINITE) {
        if (r.kind == SB_NUM_FINITE) num_zero(&r, false); /* no -0 */
        *out = r;
        return;
    }
    if (v->neg) {
        r.neg = true;
        r.v = -fabs(r.v);
    }
    *out = r;
}

/* `[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?` over the whole of `t`. */
static bool number_grammar(sb_str t, bool *has_exp) {
    const char *s = t.ptr;
    size_t n = t.len, i = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t int_digits = 0, frac_digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++, int_digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, frac_digits++;
    }
    if (int_digits == 0 && frac_digits == 0) return false;
    *has_exp = false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        size_t e = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, e++;
        if (e == 0) return false;
        *has_exp = true;
    }
    return i == n;
}

static const char *quoted_reason(sb_arena *a, const char *what, sb_str t) {
    buf b = {0};
    buf_cstr(&b, what);
    buf_json(&b, js_truncate(a, t, 40));
    buf_putc(&b, 0);
    const char *r = buf_to_arena(&b, a).ptr;
    free(b.p);
    return r;
}

const char *sb_parse_number(sb_arena *a, sb_str text, sb_num *out, int *decimals) {
    sb_str t = js_trim(text);
    if (t.len == 0) return "empty value";
    bool has_exp = false;
    if (!number_grammar(t, &has_exp)) return quoted_reason(a, "not a number: ", t);
    num_from_text(t.ptr, t.len, out);
    if (out->kind != SB_NUM_FINITE) return quoted_reason(a, "not a finite number: ", t);
    if (has_exp) {
        *decimals = -1;
    } else {
        const char *dot = memchr(t.ptr, '.', t.len);
        *decimals = dot == NULL ? 0 : (int)(t.len - (size_t)(dot - t.ptr) - 1);
        if (*decimals > 1000000) *decimals = 1000000;
    }
    return NULL;
}

/* JavaScript's Number(string) for config values such as max_payload. */
static double js_string_to_number(sb_str s) {
    sb_str t = js_trim(s);
    if (t.len == 0) return 0;
    if (t.len > 2 && t.ptr[0] == '0' && t.ptr[1] != 0 && strchr("xXoObB", t.ptr[1]) != NULL) {
        int base = (t.ptr[1] == 'x' || t.ptr[1] == 'X') ? 16 : (t.ptr[1] == 'o' || t.ptr[1] == 'O') ? 8 : 2;
        double v = 0;
        for (size_t i = 2; i < t.len; i++) {
            char c = t.ptr[i];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 99;
            if (d >= base) return NAN;
            v = v * base + d;
        }
        return v;
    }
    sb_str body = t;
    bool neg = false;
    if (body.ptr[0] == '+' || body.ptr[0] == '-') {
        neg = body.ptr[0] == '-';
        body.ptr++;
        body.len--;
    }
    if (str_is(body, "Infinity")) return neg ? -INFINITY : INFINITY;
    bool has_exp;
    if (!number_grammar(t, &has_exp)) return NAN;
    sb_num n;
    num_from_text(t.ptr, t.len, &n);
    return n.v;
}

double sb_parse_seconds(sb_str text) {
    /* /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/ */
    sb_str t = js_trim(text);
    size_t i = 0, n = t.len;
    const char *s = t.ptr;
    size_t d0 = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d0) return -1;
    if (i < n && s[i] == '.') {
        size_t f0 = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == f0) return -1;
    }
    sb_num num;
    num_from_text(s + d0, i - d0, &num);
    sb_str rest = js_trim((sb_str){s + i, n - i});
    double unit;
    if (rest.len == 0 || str_is(rest, "s")) unit = 1;
    else if (str_is(rest, "ms")) unit = 0.001;
    else if (str_is(rest, "m")) unit = 60;
    else if (str_is(rest, "h")) unit = 3600;
    else return -1;
    return num.v * unit;
}

/* ------------------------------------------------------------------------------------------
 * JSON, as JSON.parse reads it. */

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jval jval;
struct jval {
    int t;
    sb_str s;   /* J_STR: the decoded text; J_NUM: the number's text */
    sb_str key; /* as a member of an object */
    jval *first, *last, *next;
    size_t n; /* J_ARR / J_OBJ: number of items */
};

typedef struct {
    const char *s;
    size_t len, pos;
    sb_arena *a;
    bool config; /* config text: dedupe keys now, lone surrogates → U+FFFD */
    int depth;
    char err[160];
} jparser;

#define JSON_MAX_DEPTH 1000

static jval *jnew(jparser *p, int t) {
    jval *v = sb_arena_alloc(p->a, sizeof *v);
    memset(v, 0, sizeof *v);
    v->t = t;
    return v;
}

/* Appends to the parser's error message (cut at its size). */
static void jerr_put(jparser *p, const char *s, size_t n) {
    size_t len = strlen(p->err);
    if (n > sizeof p->err - 1 - len) n = sizeof p->err - 1 - len;
    memcpy(p->err + len, s, n);
    p->err[len + n] = 0;
}

static void jerr_cstr(jparser *p, const char *s) { jerr_put(p, s, strlen(s)); }

static bool jfail(jparser *p, const char *what) {
    if (p->err[0] != 0) return false;
    if (p->pos >= p->len) {
        jerr_cstr(p, "Unexpected end of JSON input");
        return false;
    }
    unsigned char c = (unsigned char)p->s[p->pos];
    size_t k = seq_len(c);
    if (p->pos + k > p->len) k = 1;
    jerr_cstr(p, what);
    if (c < 0x20) {
        char hex[12] = " (byte 0x";
        hex[9] = HEX[c >> 4];
        hex[10] = HEX[c & 15];
        hex[11] = 0;
        jerr_cstr(p, hex);
        jerr_cstr(p, ")");
    } else {
        jerr_cstr(p, " ");
        jerr_put(p, p->s + p->pos, k);
    }
    jerr_cstr(p, " in JSON at position ");
    char num[24];
    jerr_put(p, num, fmt_u64(num, p->pos));
    return false;
}

static void jws(jparser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static size_t put_utf8(char *q, unsigned cp) {
    if (cp < 0x80) {
        q[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        q[0] = (char)(0xC0 | (cp >> 6));
        q[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        q[0] = (char)(0xE0 | (cp >> 12));
        q[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        q[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    q[0] = (char)(0xF0 | (cp >> 18));
    q[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    q[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    q[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static bool jstring(jparser *p, sb_str *out) {
    p->pos++; /* the opening quote */
    size_t start = p->pos;
    bool escapes = false;
    for (;;) {
        if (p->pos >= p->len) return jfail(p, "Unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') break;
        if (c < 0x20) return jfail(p, "Bad control character in string literal");
        if (c == '\\') {
            escapes = true;
            p->pos++;
            if (p->pos >= p->len) return jfail(p, "Unterminated string");
            char e = p->s[p->pos];
            if (e == 'u') {
                for (int k = 1; k <= 4; k++) {
                    if (p->pos + (size_t)k >= p->len || hexval(p->s[p->pos + (size_t)k]) < 0) {
                        p->pos += (size_t)k;
                        return jfail(p, "Bad Unicode escape");
                    }
                }
                p->pos += 4;
            } else if (strchr("\"\\/bfnrt", e) == NULL || e == 0) {
                return jfail(p, "Bad escaped character");
            }
        }
        p->pos++;
    }
    size_t end = p->pos;
    p->pos++; /* the closing quote */
    if (!escapes) {
        *out = (sb_str){p->s + start, end - start};
        return true;
    }
    char *q = sb_arena_alloc(p->a, end - start);
    size_t o = 0;
    for (size_t i = start; i < end;) {
        char c = p->s[i];
        if (c != '\\') {
            q[o++] = c;
            i++;
            continue;
        }
        char e = p->s[i + 1];
        i += 2;
        switch (e) {
        case 'b': q[o++] = '\b'; break;
        case 'f': q[o++] = '\f'; break;
        case 'n': q[o++] = '\n'; break;
        case 'r': q[o++] = '\r'; break;
        case 't': q[o++] = '\t'; break;
        case 'u': {
            unsigned cp = 0;
            for (int k = 0; k < 4; k++) cp = cp * 16 + (unsigned)hexval(p->s[i + (size_t)k]);
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= end && p->s[i] == '\\' && p->s[i + 1] == 'u') {
                unsigned lo = 0;
                for (int k = 0; k < 4; k++) lo = lo * 16 + (unsigned)hexval(p->s[i + 2 + (size_t)k]);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF && p->config) cp = 0xFFFD;
            /* A lone surrogate stays a 3-byte (WTF-8) sequence: JSON.stringify escapes it. */
            o += put_utf8(q + o, cp);
            break;
        }
        default: q[o++] = e; break;
        }
    }
    *out = (sb_str){q, o};
    return true;
}

static bool jnumber(jparser *p) {
    size_t i = p->pos;
    const char *s = p->s;
    size_t n = p->len;
    if (i < n && s[i] == '-') i++;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    } else {
        p->pos = i;
        return jfail(p, i < n ? "Unexpected token" : "No number after minus sign");
    }
    if (i < n && s[i] == '.') {
        i++;
        if (!(i < n && s[i] >= '0' && s[i] <= '9')) {
            p->pos = i;
            return jfail(p, "Unterminated fractional number");
        }
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (!(i < n && s[i] >= '0' && s[i] <= '9')) {
            p->pos = i;
            return jfail(p, "Exponent part is missing a number");
        }
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    p->pos = i;
    return true;
}

static jval *jvalue(jparser *p);

static void jadd(jparser *p, jval *parent, jval *item) {
    if (p->config && parent->t == J_OBJ) {
        /* JSON.parse keeps the last value of a repeated key, in the first one's place. */
        for (jval *m = parent->first; m != NULL; m = m->next) {
            if (str_eq(m->key, item->key)) {
                jval *next = m->next;
                sb_str key = m->key;
                *m = *item;
                m->key = key;
                m->next = next;
                return;
            }
        }
    }
    if (parent->last == NULL) parent->first = item;
    else parent->last->next = item;
    parent->last = item;
    parent->n++;
}

static jval *jcontainer(jparser *p, bool object) {
    if (++p->depth > JSON_MAX_DEPTH) {
        jerr_cstr(p, "nesting deeper than 1000 levels");
        return NULL;
    }
    jval *v = jnew(p, object ? J_OBJ : J_ARR);
    p->pos++;
    jws(p);
    char close = object ? '}' : ']';
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        p->depth--;
        return v;
    }
    for (;;) {
        sb_str key = {0};
        if (object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                jfail(p, "Expected property name or '}', got");
                return NULL;
            }
            if (!jstring(p, &key)) return NULL;
            jws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                jfail(p, "Expected ':' after property name, got");
                return NULL;
            }
            p->pos++;
        }
        jval *item = jvalue(p);
        if (item == NULL) return NULL;
        item->key = key;
        jadd(p, v, item);
        jws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            jws(p);
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            break;
        }
        jfail(p, object ? "Expected ',' or '}' after property value, got" : "Expected ',' or ']' after array element, got");
        return NULL;
    }
    p->depth--;
    return v;
}

static jval *jvalue(jparser *p) {
    jws(p);
    if (p->pos >= p->len) {
        jfail(p, "");
        return NULL;
    }
    char c = p->s[p->pos];
    if (c == '{' || c == '[') return jcontainer(p, c == '{');
    if (c == '"') {
        jval *v = jnew(p, J_STR);
        return jstring(p, &v->s) ? v : NULL;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        size_t start = p->pos;
        if (!jnumber(p)) return NULL;
        jval *v = jnew(p, J_NUM);
        v->s = (sb_str){p->s + start, p->pos - start};
        return v;
    }
    static const struct {
        const char *word;
        int t;
    } WORDS[] = {{"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL}};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(WORDS[i].word);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, WORDS[i].word, n) == 0) {
            p->pos += n;
            return jnew(p, WORDS[i].t);
        }
    }
    jfail(p, "Unexpected token");
    return NULL;
}

/* Parses a whole JSON text; NULL with `p->err` set on a mistake. */
static jval *jparse(jparser *p) {
    jval *v = jvalue(p);
    if (v == NULL) return NULL;
    jws(p);
    if (p->pos < p->len) {
        jfail(p, "Unexpected non-whitespace character after JSON:");
        return NULL;
    }
    return v;
}

/* The member `key` of object `o` (the last one of that name), or NULL. */
static jval *jget(const jval *o, sb_str key) {
    jval *found = NULL;
    for (jval *m = o->first; m != NULL; m = m->next)
        if (str_eq(m->key, key)) found = m;
    return found;
}

static jval *jgetc(const jval *o, const char *key) { return jget(o, S(key)); }

/* Whether `k` is an array index ("0", "17", below 2^32 - 1): JavaScript lists those keys
 * first, in numeric order. */
static bool array_index(sb_str k, uint64_t *v) {
    if (k.len == 0 || k.len > 10 || (k.len > 1 && k.ptr[0] == '0')) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < k.len; i++) {
        if (k.ptr[i] < '0' || k.ptr[i] > '9') return false;
        x = x * 10 + (uint64_t)(k.ptr[i] - '0');
    }
    if (x >= 4294967295ull) return false;
    *v = x;
    return true;
}

/* The members of a (deduplicated) object in Object.keys order, in an arena array. */
static jval **jentries(sb_arena *a, const jval *o) {
    jval **out = sb_arena_alloc(a, (o->n + 1) * sizeof *out);
    size_t n = 0;
    /* Array indices first, ascending (insertion sort: configs are small). */
    for (jval *m = o->first; m != NULL; m = m->next) {
        uint64_t x, y;
        if (!array_index(m->key, &x)) continue;
        size_t i = n++;
        while (i > 0 && array_index(out[i - 1]->key, &y) && y > x) {
            out[i] = out[i - 1];
            i--;
        }
        out[i] = m;
    }
    for (jval *m = o->first; m != NULL; m = m->next) {
        uint64_t x;
        if (!array_index(m->key, &x)) out[n++] = m;
    }
    out[n] = NULL;
    return out;
}

/* String(v) of JavaScript, for values quoted in config errors. */
static void buf_js_string(buf *b, const jval *v) {
    switch (v->t) {
    case J_NULL: buf_cstr(b, "null"); break;
    case J_TRUE: buf_cstr(b, "true"); break;
    case J_FALSE: buf_cstr(b, "false"); break;
    case J_STR: buf_str(b, v->s); break;
    case J_NUM: {
        sb_num n;
        num_from_text(v->s.ptr, v->s.len, &n);
        buf_num(b, &n);
        break;
    }
    case J_OBJ: buf_cstr(b, "[object Object]"); break;
    case J_ARR:
        for (jval *m = v->first; m != NULL; m = m->next) {
            if (m != v->first) buf_putc(b, ',');
            if (m->t != J_NULL) buf_js_string(b, m);
        }
        break;
    }
}

/* ------------------------------------------------------------------------------------------
 * Topic patterns and templates. */

typedef struct {
    bool cap;      /* a placeholder */
    sb_str lit;    /* literal text (or the placeholder's name) */
    sb_str *opts;  /* alternatives of `{name:a|b}` */
    size_t nopts;
} part;

typedef struct {
    sb_str text;
    part *parts;
    size_t nparts;
    sb_str *names; /* placeholder names in order */
    size_t nnames;
} pattern;

enum { T_LIT, T_CAP, T_QUANTITY, T_OUTPUT };

typedef struct {
    int kind;
    sb_str lit;
    size_t cap; /* T_CAP: index into the pattern's captures */
} tpart;

typedef struct {
    sb_str text;
    tpart *parts;
    size_t nparts;
    bool uses_quantity;
} template_t;

static bool is_name(sb_str s) {
    if (s.len == 0) return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
        if (!ok) return false;
    }
    return true;
}

static const char *find_char(sb_str s, size_t from, char c) {
    if (from >= s.len) return NULL;
    return memchr(s.ptr + from, c, s.len - from);
}

/* tokenize() of the JavaScript version; on a mistake returns false with the reason in `err`. */
static bool tokenize(sb_arena *a, sb_str text, bool allow_options, part **out, size_t *nout, buf *err) {
    /* At most one literal and one placeholder per `{`, plus a trailing literal. */
    size_t max = 1;
    for (size_t i = 0; i < text.len; i++)
        if (text.ptr[i] == '{') max += 2;
    part *parts = sb_arena_alloc(a, max * sizeof *parts);
    size_t n = 0, i = 0;
    while (i < text.len) {
        const char *open = find_char(text, i, '{');
        const char *close = find_char(text, i, '}');
        if (close != NULL && (open == NULL || close < open)) {
            buf_cstr(err, "`}` without a matching `{`");
            return false;
        }
        if (open == NULL) {
            parts[n++] = (part){.lit = {text.ptr + i, text.len - i}};
            break;
        }
        size_t o = (size_t)(open - text.ptr);
        if (o > i) parts[n++] = (part){.lit = {text.ptr + i, o - i}};
        const char *endp = find_char(text, o, '}');
        if (endp == NULL) {
            buf_cstr(err, "`{` is not closed");
            return false;
        }
        size_t end = (size_t)(endp - text.ptr);
        sb_str inner = {text.ptr + o + 1, end - o - 1};
        if (memchr(inner.ptr, '{', inner.len) != NULL) {
            buf_cstr(err, "placeholders cannot be nested");
            return false;
        }
        const char *colon = memchr(inner.ptr, ':', inner.len);
        sb_str name = colon == NULL ? inner : (sb_str){inner.ptr, (size_t)(colon - inner.ptr)};
        if (!is_name(name)) {
            buf_cstr(err, "`{");
            buf_str(err, inner);
            buf_cstr(err, "}`: a placeholder name is letters, digits and _ (not starting with a digit)");
            return false;
        }
        part p = {.cap = true, .lit = name};
        if (colon != NULL) {
            if (!allow_options) {
                buf_cstr(err, "`{");
                buf_str(err, inner);
                buf_cstr(err, "}`: alternatives are only allowed in the topic pattern");
                return false;
            }
            sb_str rest = {colon + 1, inner.len - name.len - 1};
            size_t count = 1;
            for (size_t k = 0; k < rest.len; k++)
                if (rest.ptr[k] == '|') count++;
            p.opts = sb_arena_alloc(a, count * sizeof *p.opts);
            size_t s0 = 0;
            for (size_t k = 0; k <= rest.len; k++) {
                if (k < rest.len && rest.ptr[k] != '|') continue;
                sb_str opt = {rest.ptr + s0, k - s0};
                bool bad = opt.len == 0;
                for (size_t j = 0; j < opt.len; j++)
                    if (opt.ptr[j] == '/' || opt.ptr[j] == '+' || opt.ptr[j] == '#') bad = true;
                if (bad) {
                    buf_cstr(err, "`{");
                    buf_str(err, inner);
                    buf_cstr(err, "}`: each alternative must be non-empty text without /, + or #");
                    return false;
                }
                p.opts[p.nopts++] = opt;
                s0 = k + 1;
            }
        }
        parts[n++] = p;
        i = end + 1;
    }
    *out = parts;
    *nout = n;
    return true;
}

static bool has_wildcard(sb_str s) { return memchr(s.ptr, '+', s.len) != NULL || memchr(s.ptr, '#', s.len) != NULL; }

/* compilePattern() of the JavaScript version. */
static bool compile_pattern(sb_arena *a, const jval *v, pattern *out, buf *err) {
    if (v == NULL || v->t != J_STR || v->s.len == 0) {
        buf_cstr(err, "must be a non-empty topic pattern");
        return false;
    }
    sb_str text = v->s;
    if (has_wildcard(text)) {
        buf_cstr(err, "MQTT wildcards + and # are not allowed: name a level with {name} instead");
        return false;
    }
    memset(out, 0, sizeof *out);
    out->text = text;
    if (!tokenize(a, text, true, &out->parts, &out->nparts, err)) return false;
    out->names = sb_arena_alloc(a, (out->nparts + 1) * sizeof *out->names);
    bool previous_was_placeholder = false;
    for (size_t i = 0; i < out->nparts; i++) {
        part *p = &out->parts[i];
        if (!p->cap) {
            previous_was_placeholder = false;
            continue;
        }
        if (previous_was_placeholder) {
            buf_cstr(err, "`{");
            buf_str(err, p->lit);
            buf_cstr(err, "}` directly follows another placeholder: separate them with literal text");
            return false;
        }
        for (size_t k = 0; k < out->nnames; k++) {
            if (str_eq(out->names[k], p->lit)) {
                buf_cstr(err, "`{");
                buf_str(err, p->lit);
                buf_cstr(err, "}` appears twice");
                return false;
            }
        }
        out->names[out->nnames++] = p->lit;
        previous_was_placeholder = true;
    }
    return true;
}

static bool pattern_has(const pattern *p, const char *name) {
    for (size_t i = 0; i < p->nnames; i++)
        if (str_is(p->names[i], name)) return true;
    return false;
}

static size_t pattern_index(const pattern *p, const char *name) {
    for (size_t i = 0; i < p->nnames; i++)
        if (str_is(p->names[i], name)) return i;
    return 0;
}

/* The regular expression of the JavaScript version (`^lit([^/]+?)lit(a|b)...$`), as a
 * backtracking matcher in the same order: a placeholder takes as few characters as it can,
 * alternatives are tried as listed. `failed` remembers (part, position) pairs that cannot
 * lead to a match, which keeps hostile topics linear per part. */
typedef struct {
    const pattern *p;
    sb_str topic;
    sb_str *caps;
    unsigned char *failed;
} matcher;

static bool match_from(matcher *m, size_t pi, size_t pos, size_t ci) {
    const pattern *p = m->p;
    if (pi == p->nparts) return pos == m->topic.len;
    size_t bit = pi * (m->topic.len + 1) + pos;
    if (m->failed[bit >> 3] & (1u << (bit & 7))) return false;
    const part *pt = &p->parts[pi];
    const char *t = m->topic.ptr;
    size_t rest = m->topic.len - pos;
    if (!pt->cap) {
        if (rest >= pt->lit.len && memcmp(t + pos, pt->lit.ptr, pt->lit.len) == 0 &&
            match_from(m, pi + 1, pos + pt->lit.len, ci))
            return true;
    } else if (pt->nopts > 0) {
        for (size_t k = 0; k < pt->nopts; k++) {
            sb_str o = pt->opts[k];
            if (rest >= o.len && memcmp(t + pos, o.ptr, o.len) == 0) {
                m->caps[ci] = (sb_str){t + pos, o.len};
                if (match_from(m, pi + 1, pos + o.len, ci + 1)) return true;
            }
        }
    } else {
        /* Fast cases: the next part is a literal; try only where it occurs. */
        const part *next = pi + 1 < p->nparts ? &p->parts[pi + 1] : NULL;
        for (size_t end = pos + 1; end <= m->topic.len && t[end - 1] != '/'; end++) {
            if (next != NULL && !next->cap && next->lit.len > 0 && (end >= m->topic.len || t[end] != next->lit.ptr[0]))
                continue;
            m->caps[ci] = (sb_str){t + pos, end - pos};
            if (match_from(m, pi + 1, end, ci + 1)) return true;
        }
    }
    m->failed[bit >> 3] |= (unsigned char)(1u << (bit & 7));
    return false;
}

static bool pattern_match(sb_arena *a, const pattern *p, sb_str topic, sb_str *caps) {
    /* A cheap test first: most topics differ from a rule's leading literal. */
    if (p->nparts > 0 && !p->parts[0].cap) {
        sb_str lit = p->parts[0].lit;
        if (topic.len < lit.len || memcmp(topic.ptr, lit.ptr, lit.len) != 0) return false;
    }
    size_t bits = p->nparts * (topic.len + 1) + 1;
    unsigned char small[256];
    unsigned char *failed = bits / 8 + 1 <= sizeof small ? small : sb_arena_alloc(a, bits / 8 + 1);
    memset(failed, 0, bits / 8 + 1);
    matcher m = {p, topic, caps, failed};
    return match_from(&m, 0, 0, 0);
}

/* compileTemplate() of the JavaScript version. `known` are the names it may use; the names
 * `quantity` and `output` refer to the reading when `special` is set. */
static bool compile_template(sb_arena *a, const jval *v, const pattern *pat, bool special, bool with_output,
                             const char *what, template_t *out, buf *err) {
    if (v == NULL || v->t != J_STR || v->s.len == 0) {
        buf_cstr(err, "must be a non-empty ");
        buf_cstr(err, what);
        return false;
    }
    sb_str text = v->s;
    if (has_wildcard(text)) {
        buf_cstr(err, "MQTT wildcards + and # are not allowed in a topic");
        return false;
    }
    part *parts;
    size_t n;
    if (!tokenize(a, text, false, &parts, &n, err)) return false;
    memset(out, 0, sizeof *out);
    out->text = text;
    out->parts = sb_arena_alloc(a, (n + 1) * sizeof *out->parts);
    for (size_t i = 0; i < n; i++) {
        tpart t = {.kind = T_LIT, .lit = parts[i].lit};
        if (parts[i].cap) {
            sb_str name = parts[i].lit;
            bool known = false;
            if (special && str_is(name, "quantity")) {
                t.kind = T_QUANTITY;
                known = true;
                out->uses_quantity = true;
            } else if (special && with_output && str_is(name, "output")) {
                t.kind = T_OUTPUT;
                known = true;
            } else {
                for (size_t k = 0; k < pat->nnames; k++) {
                    if (str_eq(pat->names[k], name)) {
                        t.kind = T_CAP;
                        t.cap = k;
                        known = true;
                    }
                }
            }
            if (!known) {
                buf_cstr(err, "`{");
                buf_str(err, name);
                buf_cstr(err, "}` is not known here (known: ");
                bool first = true;
                for (size_t k = 0; k < pat->nnames; k++) {
                    if (special && str_is(pat->names[k], "quantity")) continue;
                    if (!first) buf_cstr(err, ", ");
                    first = false;
                    buf_putc(err, '{');
                    buf_str(err, pat->names[k]);
                    buf_putc(err, '}');
                }
                if (special) buf_cstr(err, first ? "{quantity}" : ", {quantity}");
                if (special && with_output) buf_cstr(err, ", {output}");
                buf_putc(err, ')');
                return false;
            }
        }
        out->parts[out->nparts++] = t;
    }
    return true;
}

static sb_str render(sb_arena *a, const template_t *t, const sb_str *caps, sb_str quantity, sb_str output) {
    size_t n = 0;
    for (size_t i = 0; i < t->nparts; i++) {
        const tpart *p = &t->parts[i];
        n += p->kind == T_LIT ? p->lit.len : p->kind == T_CAP ? caps[p->cap].len : p->kind == T_QUANTITY ? quantity.len : output.len;
    }
    char *q = sb_arena_alloc(a, n);
    size_t o = 0;
    for (size_t i = 0; i < t->nparts; i++) {
        const tpart *p = &t->parts[i];
        sb_str s = p->kind == T_LIT ? p->lit : p->kind == T_CAP ? caps[p->cap] : p->kind == T_QUANTITY ? quantity : output;
        if (s.len > 0) memcpy(q + o, s.ptr, s.len);
        o += s.len;
    }
    return (sb_str){q, n};
}

/* ------------------------------------------------------------------------------------------
 * Config. */

enum { P_PLAIN, P_KV, P_CSV, P_JSON };
static const char *const PARSER_NAMES[] = {"plain", "kv", "csv", "json"};
static const char *const RESERVED_QUANTITIES[] = {"device", "unit", "ts"};
static const char *const LOG_LEVELS[] = {"trace", "debug", "info", "warn", "error", "off"};
static const char *const TOP_KEYS[] = {"rules", "error_topic", "log_errors", "stats_interval", "max_payload", NULL};
static const char *const RULE_KEYS[] = {"name", "topic",  "parser", "quantity", "fields", "columns", "separator", "output",
                                        "unit", "round", "min",    "max",      "quantities", "replace", "error_topic", NULL};
static const char *const QUANTITY_KEYS[] = {"unit", "round", "min", "max", "output", NULL};

/** Settings of one quantity (the rule's, or its `quantities.<name>` entry merged over them). */
typedef struct {
    bool has_unit;
    sb_str unit;
    int round; /* -1: none */
    bool has_min, has_max;
    sb_num min, max;
    const template_t *output;
    /* `,"unit":"C","ts":` or `,"ts":`, precomputed. */
    sb_str unit_ts;
} qsettings;

typedef struct {
    sb_str name;
    qsettings s;
} perq;

typedef struct {
    sb_str key;    /* kv key or json path */
    sb_str *segs;  /* json: the path split at dots */
    size_t nsegs;
    sb_str quantity;
} field;

typedef struct {
    sb_str name;
    pattern pat;
    size_t device; /* index of {device} among the captures */
    int parser;
    bool replace;
    template_t quantity; /* plain */
    sb_str separator;
    field *fields;
    size_t nfields;
    sb_str *columns; /* csv; .ptr == NULL skips a column */
    size_t ncolumns;
    qsettings base;
    template_t output;
    perq *perq;
    size_t nperq;
    template_t error_topic;
    sb_rule_counters counters;
} rule;

/*
 * The topic cache: direct-mapped (a topic's slot is its hash modulo the size; a new topic
 * replaces the old one in its slot), so a lookup is one hash, one compare. Bounded: about
 * 150 bytes per slot in use. A fleet with more distinct topics than slots still works, at the
 * cost of more misses (a miss costs what the uncached path costs, plus a copy of the topic).
 */
#define TOPIC_CACHE_SLOTS 1024

typedef struct {
    bool used;
    bool prepared; /* plain rule: quantity, s, out_topic, reserved and prefix are set */
    bool reserved; /* the quantity is a key the output payload uses itself */
    uint32_t hash;
    long rule;  /* -1: no rule matches */
    char *mem;  /* malloc'ed: the captures, then the topic */
    char *prep; /* malloc'ed: quantity, output topic and payload prefix */
    sb_str topic;
    sb_str *caps;
    sb_str quantity, out_topic;
    sb_str prefix; /* {"device":"aloys","temperature": */
    const qsettings *s;
} topic_entry;

struct sb_bridge {
    topic_entry *cache; /* TOPIC_CACHE_SLOTS entries */
    uint64_t ts_ms;     /* the last `ts` formatted, and its text */
    char ts_text[24];
    size_t ts_len;
    sb_arena cfg;     /* the config, for the bridge's lifetime */
    sb_arena scratch; /* one message's work */
    rule *rules;
    size_t nrules;
    sb_log_level log_errors;
    double stats_millis;
    double max_payload;
    sb_num max_payload_num;
    sb_counters counters;
    buf out; /* assembles payloads and lines */
    sb_result result;
};

typedef struct {
    sb_arena *a;
    buf *err;
    buf label;
} cfgctx;

/* Starts the message `${label}: key \`${key}\`: ` in `err`; the caller appends the reason. */
static buf *at(cfgctx *c, const char *key) {
    c->err->len = 0;
    buf_str(c->err, (sb_str){c->label.p, c->label.len});
    buf_cstr(c->err, ": key `");
    buf_cstr(c->err, key);
    buf_cstr(c->err, "`: ");
    return c->err;
}

static bool fail_at(cfgctx *c, const char *key, const char *reason) {
    buf_cstr(at(c, key), reason);
    return false;
}

/* Re-prefixes a reason already in `err` (from a pattern or template) with the rule and key. */
static bool fail_at_with(cfgctx *c, const char *key, buf *reason) {
    buf tmp = {0};
    buf_put(&tmp, reason->p, reason->len);
    at(c, key);
    buf_put(c->err, tmp.p, tmp.len);
    free(tmp.p);
    return false;
}

static bool check_keys(cfgctx *c, const jval *obj, const char *const *allowed, const char *where_prefix_key) {
    jval **members = jentries(c->a, obj);
    for (size_t i = 0; members[i] != NULL; i++) {
        bool ok = false;
        for (size_t k = 0; allowed[k] != NULL; k++)
            if (str_is(members[i]->key, allowed[k])) ok = true;
        if (ok) continue;
        c->err->len = 0;
        buf_str(c->err, (sb_str){c->label.p, c->label.len});
        if (where_prefix_key != NULL) {
            buf_cstr(c->err, ": key `");
            buf_cstr(c->err, where_prefix_key);
            buf_cstr(c->err, "`");
        }
        buf_cstr(c->err, ": unknown key `");
        buf_str(c->err, members[i]->key);
        buf_cstr(c->err, "` (known: ");
        for (size_t k = 0; allowed[k] != NULL; k++) {
            if (k > 0) buf_cstr(c->err, ", ");
            buf_cstr(c->err, allowed[k]);
        }
        buf_putc(c->err, ')');
        return false;
    }
    return true;
}

/* toNumber(): absent → false with *has = false; a JSON number, or a string of a number. */
static bool to_number(cfgctx *c, const jval *v, const char *key, bool *has, sb_num *out) {
    *has = false;
    if (v == NULL) return true;
    bool ok = false;
    if (v->t == J_NUM) {
        num_from_text(v->s.ptr, v->s.len, out);
        ok = out->kind == SB_NUM_FINITE;
    } else if (v->t == J_STR) {
        sb_str t = js_trim(v->s);
        bool has_exp;
        if (number_grammar(t, &has_exp)) {
            num_from_text(t.ptr, t.len, out);
            ok = out->kind == SB_NUM_FINITE;
        }
    }
    if (!ok) return fail_at(c, key, "must be a number");
    *has = true;
    return true;
}

static bool to_decimals(cfgctx *c, const jval *v, const char *key, int *out) {
    bool has;
    sb_num n;
    *out = -1;
    if (!to_number(c, v, key, &has, &n)) return false;
    if (!has) return true;
    if (!(n.v == floor(n.v) && n.v >= 0 && n.v <= 10)) return fail_at(c, key, "must be a whole number of decimals from 0 to 10");
    *out = (int)n.v;
    return true;
}

static bool check_quantity_name(cfgctx *c, const jval *q, const char *key) {
    if (q == NULL || q->t != J_STR || q->s.len == 0) return fail_at(c, key, "quantity names must be non-empty strings");
    for (size_t i = 0; i < 3; i++) {
        if (str_is(q->s, RESERVED_QUANTITIES[i])) {
            buf *e = at(c, key);
            buf_putc(e, '`');
            buf_str(e, q->s);
            buf_cstr(e, "` cannot be a quantity name: the output payload uses that key itself");
            return false;
        }
    }
    return true;
}

static const char *cstr_of(sb_arena *a, sb_str s) {
    char *q = sb_arena_alloc(a, s.len + 1);
    memcpy(q, s.ptr, s.len);
    q[s.len] = 0;
    return q;
}

static void finish_settings(sb_arena *a, qsettings *s) {
    buf b = {0};
    if (s->has_unit) {
        buf_cstr(&b, ",\"unit\":");
        buf_json(&b, s->unit);
    }
    buf_cstr(&b, ",\"ts\":");
    s->unit_ts = buf_to_arena(&b, a);
    free(b.p);
}

/* parseRule() of the JavaScript version. */
static bool parse_rule(cfgctx *c, const jval *raw, size_t i, const jval *default_error_topic, rule *r) {
    sb_arena *a = c->a;
    memset(r, 0, sizeof *r);
    c->label.len = 0;
    char idx[32];
    memcpy(idx, "rules[", 6);
    size_t il = 6 + fmt_u64(idx + 6, i);
    idx[il++] = ']';
    idx[il] = 0;
    buf_cstr(&c->label, idx);
    const jval *name = raw->t == J_OBJ ? jgetc(raw, "name") : NULL;
    if (name != NULL && name->t == J_STR && name->s.len > 0) {
        buf_cstr(&c->label, " (");
        buf_str(&c->label, name->s);
        buf_putc(&c->label, ')');
    }
    if (raw->t != J_OBJ) {
        c->err->len = 0;
        buf_str(c->err, (sb_str){c->label.p, c->label.len});
        buf_cstr(c->err, ": each rule must be a map with at least `topic` and `output`");
        return false;
    }
    if (!check_keys(c, raw, RULE_KEYS, NULL)) return false;
    if (name != NULL && (name->t != J_STR || name->s.len == 0)) return fail_at(c, "name", "must be a non-empty string");
    r->name = name != NULL ? name->s : arena_dup(a, idx, strlen(idx));

    buf reason = {0};
    bool ok = false;
    const jval *topic = jgetc(raw, "topic");
    if (topic == NULL) {
        fail_at(c, "topic", "is required (a topic pattern such as `sensors/{device}/{kind}`)");
        goto done;
    }
    if (!compile_pattern(a, topic, &r->pat, &reason)) {
        fail_at_with(c, "topic", &reason);
        goto done;
    }
    if (pattern_has(&r->pat, "output")) {
        fail_at(c, "topic", "`{output}` cannot be captured: error_topic uses that name for the output topic");
        goto done;
    }
    if (!pattern_has(&r->pat, "device")) {
        fail_at(c, "topic", "the pattern must capture the device with `{device}` (e.g. `sensors/{device}/temperature`)");
        goto done;
    }
    r->device = pattern_index(&r->pat, "device");

    const jval *parser = jgetc(raw, "parser");
    r->parser = -1;
    if (parser == NULL || parser->t == J_NULL) r->parser = P_PLAIN;
    else if (parser->t == J_STR)
        for (int k = 0; k < 4; k++)
            if (str_is(parser->s, PARSER_NAMES[k])) r->parser = k;
    if (r->parser < 0) {
        buf *e = at(c, "parser");
        buf_cstr(e, "unknown parser `");
        buf_js_string(e, parser);
        buf_cstr(e, "` (use plain, kv, csv or json)");
        goto done;
    }
    const jval *sep = jgetc(raw, "separator");
    if (sep != NULL && r->parser != P_KV && r->parser != P_CSV) {
        fail_at(c, "separator", "only applies to the kv and csv parsers");
        goto done;
    }
    if (sep != NULL && (sep->t != J_STR || sep->s.len == 0)) {
        fail_at(c, "separator", "must be a non-empty string");
        goto done;
    }
    r->separator = sep != NULL ? sep->s : S(",");

    const jval *quantity = jgetc(raw, "quantity");
    const jval *fields = jgetc(raw, "fields");
    const jval *columns = jgetc(raw, "columns");
    /* The quantities the parser can yield, when they do not depend on the topic. */
    sb_str *statics = NULL;
    size_t nstatics = 0;
    if (r->parser == P_PLAIN) {
        if (fields != NULL) {
            fail_at(c, "fields", "only applies to the kv and json parsers");
            goto done;
        }
        if (columns != NULL) {
            fail_at(c, "columns", "only applies to the csv parser");
            goto done;
        }
        if (quantity == NULL) {
            fail_at(c, "quantity", "is required with parser plain: the name of the reading, e.g. `temperature` or `{kind}`");
            goto done;
        }
        if (!compile_template(a, quantity, &r->pat, false, false, "quantity name", &r->quantity, &reason)) {
            fail_at_with(c, "quantity", &reason);
            goto done;
        }
        bool uses_capture = false;
        for (size_t k = 0; k < r->quantity.nparts; k++)
            if (r->quantity.parts[k].kind != T_LIT) uses_capture = true;
        if (!uses_capture) {
            if (!check_quantity_name(c, quantity, "quantity")) goto done;
            statics = sb_arena_alloc(a, sizeof *statics);
            statics[nstatics++] = quantity->s;
        }
    } else if (r->parser == P_CSV) {
        if (quantity != NULL) {
            fail_at(c, "quantity", "only applies to the plain parser (use `columns`)");
            goto done;
        }
        if (fields != NULL) {
            fail_at(c, "fields", "only applies to the kv and json parsers (use `columns`)");
            goto done;
        }
        if (columns == NULL || columns->t != J_ARR || columns->n == 0) {
            fail_at(c, "columns", "is required with parser csv: a list of quantity names, one per column (null or \"\" skips a column)");
            goto done;
        }
        r->columns = sb_arena_alloc(a, columns->n * sizeof *r->columns);
        statics = sb_arena_alloc(a, columns->n * sizeof *statics);
        for (jval *col = columns->first; col != NULL; col = col->next) {
            sb_str q = {0};
            if (!(col->t == J_NULL || (col->t == J_STR && col->s.len == 0))) {
                if (!check_quantity_name(c, col, "columns")) goto done;
                q = col->s;
                statics[nstatics++] = q;
            }
            r->columns[r->ncolumns++] = q;
        }
        if (nstatics == 0) {
            fail_at(c, "columns", "names no quantity");
            goto done;
        }
    } else {
        if (quantity != NULL) {
            fail_at(c, "quantity", "only applies to the plain parser (use `fields`)");
            goto done;
        }
        if (columns != NULL) {
            fail_at(c, "columns", "only applies to the csv parser (use `fields`)");
            goto done;
        }
        jval **entries = NULL;
        size_t n = 0;
        if (fields != NULL && fields->t == J_ARR) {
            n = fields->n;
        } else if (fields != NULL && fields->t == J_OBJ) {
            entries = jentries(a, fields);
            n = fields->n;
        } else {
            buf *e = at(c, "fields");
            buf_cstr(e, "is required with parser ");
            buf_cstr(e, PARSER_NAMES[r->parser]);
            buf_cstr(e, r->parser == P_KV ? ": a map from payload key" : ": a map from payload field");
            buf_cstr(e, " to quantity name (e.g. {t: temperature, h: humidity}), or a list of names");
            goto done;
        }
        if (n == 0) {
            fail_at(c, "fields", "names no quantity");
            goto done;
        }
        r->fields = sb_arena_alloc(a, n * sizeof *r->fields);
        statics = sb_arena_alloc(a, n * sizeof *statics);
        jval *item = fields->first;
        for (size_t k = 0; k < n; k++) {
            const jval *q = entries != NULL ? entries[k] : item;
            bool key_ok = entries != NULL ? entries[k]->key.len > 0 : (item->t == J_STR && item->s.len > 0);
            if (!key_ok) {
                fail_at(c, "fields", "payload keys must be non-empty strings");
                goto done;
            }
            if (!check_quantity_name(c, q, "fields")) goto done;
            field *f = &r->fields[r->nfields++];
            memset(f, 0, sizeof *f);
            f->key = entries != NULL ? entries[k]->key : item->s;
            f->quantity = q->s;
            statics[nstatics++] = q->s;
            /* path.split('.') */
            size_t segs = 1;
            for (size_t j = 0; j < f->key.len; j++)
                if (f->key.ptr[j] == '.') segs++;
            f->segs = sb_arena_alloc(a, segs * sizeof *f->segs);
            size_t s0 = 0;
            for (size_t j = 0; j <= f->key.len; j++) {
                if (j < f->key.len && f->key.ptr[j] != '.') continue;
                f->segs[f->nsegs++] = (sb_str){f->key.ptr + s0, j - s0};
                s0 = j + 1;
            }
            if (item != NULL) item = item->next;
        }
    }
    const char *list_key = r->parser == P_CSV ? "columns" : "fields";
    for (size_t x = 0; x < nstatics; x++) {
        for (size_t y = x + 1; y < nstatics; y++) {
            if (str_eq(statics[x], statics[y])) {
                fail_at(c, list_key, "names a quantity twice");
                goto done;
            }
        }
    }
    if (nstatics > SB_MAX_OUTPUTS) {
        buf *e = at(c, list_key);
        buf_cstr(e, "names ");
        buf_u64(e, nstatics);
        buf_cstr(e, " quantities; at most 64 (the broker's limit of additional messages per publish)");
        goto done;
    }

    const jval *output = jgetc(raw, "output");
    if (output == NULL) {
        fail_at(c, "output", "is required: the topic template of the structured reading, e.g. `home/{device}/{quantity}`");
        goto done;
    }
    if (!compile_template(a, output, &r->pat, true, false, "topic template", &r->output, &reason)) {
        fail_at_with(c, "output", &reason);
        goto done;
    }

    const jval *unit = jgetc(raw, "unit");
    qsettings *base = &r->base;
    base->output = &r->output;
    if (!to_decimals(c, jgetc(raw, "round"), "round", &base->round)) goto done;
    if (!to_number(c, jgetc(raw, "min"), "min", &base->has_min, &base->min)) goto done;
    if (!to_number(c, jgetc(raw, "max"), "max", &base->has_max, &base->max)) goto done;
    if (unit != NULL && unit->t != J_STR) {
        fail_at(c, "unit", "must be a string");
        goto done;
    }
    if (unit != NULL) {
        base->has_unit = true;
        base->unit = unit->s;
    }
    if (base->has_min && base->has_max && base->min.v > base->max.v) {
        buf *e = at(c, "max");
        buf_cstr(e, "is below min (");
        buf_num(e, &base->min);
        buf_putc(e, ')');
        goto done;
    }
    finish_settings(a, base);

    const jval *quantities = jgetc(raw, "quantities");
    if (quantities != NULL) {
        if (quantities->t != J_OBJ) {
            fail_at(c, "quantities", "must be a map from quantity name to {unit, round, min, max, output}");
            goto done;
        }
        jval **entries = jentries(a, quantities);
        r->perq = sb_arena_alloc(a, (quantities->n + 1) * sizeof *r->perq);
        for (size_t k = 0; entries[k] != NULL; k++) {
            const jval *s = entries[k];
            sb_str q = s->key;
            buf keyb = {0};
            buf_cstr(&keyb, "quantities.");
            buf_str(&keyb, q);
            const char *key = cstr_of(a, (sb_str){keyb.p, keyb.len});
            free(keyb.p);
            if (s->t != J_OBJ) {
                fail_at(c, key, "must be a map with unit, round, min, max or output");
                goto done;
            }
            jval qname = {.t = J_STR, .s = q};
            if (!check_quantity_name(c, &qname, "quantities")) goto done;
            if (!check_keys(c, s, QUANTITY_KEYS, key)) goto done;
            if (nstatics > 0) {
                bool found = false;
                for (size_t x = 0; x < nstatics; x++)
                    if (str_eq(statics[x], q)) found = true;
                if (!found) {
                    buf *e = at(c, key);
                    buf_putc(e, '`');
                    buf_str(e, q);
                    buf_cstr(e, "` is not one of this rule's quantities (");
                    for (size_t x = 0; x < nstatics; x++) {
                        if (x > 0) buf_cstr(e, ", ");
                        buf_str(e, statics[x]);
                    }
                    buf_putc(e, ')');
                    goto done;
                }
            }
            perq *pq = &r->perq[r->nperq++];
            pq->name = q;
            qsettings *m = &pq->s;
            *m = *base;
            const jval *su = jgetc(s, "unit");
            const jval *sr = jgetc(s, "round");
            const jval *smin = jgetc(s, "min");
            const jval *smax = jgetc(s, "max");
            const jval *sout = jgetc(s, "output");
            buf kb = {0};
            static const char *const suffixes[] = {".round", ".min", ".max", ".output", ".unit"};
            const char *keys[5];
            for (size_t x = 0; x < 5; x++) {
                kb.len = 0;
                buf_cstr(&kb, key);
                buf_cstr(&kb, suffixes[x]);
                keys[x] = cstr_of(a, (sb_str){kb.p, kb.len});
            }
            free(kb.p);
            if (su != NULL && su->t != J_NULL) {
                m->has_unit = true;
                m->unit = su->s;
            }
            if (sr != NULL && !to_decimals(c, sr, keys[0], &m->round)) goto done;
            if (smin != NULL && !to_number(c, smin, keys[1], &m->has_min, &m->min)) goto done;
            if (smax != NULL && !to_number(c, smax, keys[2], &m->has_max, &m->max)) goto done;
            if (sout != NULL) {
                template_t *t = sb_arena_alloc(a, sizeof *t);
                if (!compile_template(a, sout, &r->pat, true, false, "topic template", t, &reason)) {
                    fail_at_with(c, keys[3], &reason);
                    goto done;
                }
                m->output = t;
            }
            if (su != NULL && su->t != J_NULL && su->t != J_STR) {
                fail_at(c, keys[4], "must be a string");
                goto done;
            }
            if (m->has_min && m->has_max && m->min.v > m->max.v) {
                buf *e = at(c, keys[2]);
                buf_cstr(e, "is below min (");
                buf_num(e, &m->min);
                buf_putc(e, ')');
                goto done;
            }
            finish_settings(a, m);
        }
    }
    /* Several quantities on one fixed topic would be indistinguishable. */
    if (nstatics > 1) {
        const template_t **fixed = sb_arena_alloc(a, nstatics * sizeof *fixed);
        size_t nfixed = 0;
        for (size_t x = 0; x < nstatics; x++) {
            const template_t *t = &r->output;
            for (size_t k = 0; k < r->nperq; k++)
                if (str_eq(r->perq[k].name, statics[x])) t = r->perq[k].s.output;
            if (!t->uses_quantity) fixed[nfixed++] = t;
        }
        bool dup = false;
        for (size_t x = 0; x < nfixed; x++)
            for (size_t y = x + 1; y < nfixed; y++)
                if (str_eq(fixed[x]->text, fixed[y]->text)) dup = true;
        if (dup) {
            buf *e = at(c, "output");
            buf_cstr(e, "the parser yields several quantities (");
            for (size_t x = 0; x < nstatics; x++) {
                if (x > 0) buf_cstr(e, ", ");
                buf_str(e, statics[x]);
            }
            buf_cstr(e, "): use {quantity} in the template, or give each its own `quantities.<name>.output`");
            goto done;
        }
    }

    const jval *et = jgetc(raw, "error_topic");
    jval fallback = {.t = J_STR, .s = S("{output}/error")};
    if (et == NULL || et->t == J_NULL) et = default_error_topic != NULL ? default_error_topic : &fallback;
    if (!compile_template(a, et, &r->pat, true, true, "topic template", &r->error_topic, &reason)) {
        fail_at_with(c, "error_topic", &reason);
        goto done;
    }

    const jval *replace = jgetc(raw, "replace");
    if (replace != NULL) {
        if (replace->t == J_TRUE || (replace->t == J_STR && str_is(replace->s, "true"))) r->replace = true;
        else if (replace->t == J_FALSE || (replace->t == J_STR && str_is(replace->s, "false"))) r->replace = false;
        else {
            fail_at(c, "replace", "must be true or false");
            goto done;
        }
    }
    ok = true;
done:
    free(reason.p);
    return ok;
}

static void set_error(char **error, const char *msg, size_t len) {
    if (error == NULL) return;
    char *e = malloc(len + 1);
    if (e == NULL) abort();
    memcpy(e, msg, len);
    e[len] = 0;
    *error = e;
}

sb_bridge *sb_bridge_new(const sb_pair *pairs, size_t npairs, char **error) {
    sb_bridge *b = calloc(1, sizeof *b);
    if (b == NULL) abort();
    sb_arena *a = &b->cfg;
    buf err = {0};
    cfgctx c = {.a = a, .err = &err};
    bool ok = false;

    /* The pairs as an object (later pairs win, like `settings[k] = v`). */
    jval settings = {.t = J_OBJ};
    for (size_t i = 0; i < npairs; i++) {
        jval *v = sb_arena_alloc(a, sizeof *v);
        memset(v, 0, sizeof *v);
        v->t = J_STR;
        v->key = arena_dup(a, pairs[i].key.ptr, pairs[i].key.len);
        v->s = arena_dup(a, pairs[i].value.ptr, pairs[i].value.len);
        jparser dummy = {.config = true};
        jadd(&dummy, &settings, v);
    }
    buf_cstr(&c.label, "config");
    if (!check_keys(&c, &settings, TOP_KEYS, NULL)) goto done;
    const jval *rules_text = jgetc(&settings, "rules");
    if (rules_text == NULL || rules_text->s.len == 0) {
        buf_cstr(&err, "config key `rules` is required: a list of rules, each with at least `topic` and `output`");
        goto done;
    }
    jparser p = {.s = rules_text->s.ptr, .len = rules_text->s.len, .a = a, .config = true};
    jval *rules = jparse(&p);
    if (rules == NULL) {
        buf_cstr(&err, "config key `rules` is not a list of rules (JSON): ");
        buf_cstr(&err, p.err);
        goto done;
    }
    if (rules->t != J_ARR || rules->n == 0) {
        buf_cstr(&err, "config key `rules` must be a non-empty list of rules");
        goto done;
    }
    const jval *log_errors = jgetc(&settings, "log_errors");
    sb_str level = log_errors != NULL ? log_errors->s : S("warn");
    b->log_errors = SB_LOG_OFF + 1;
    for (int k = 0; k <= SB_LOG_OFF; k++)
        if (str_is(level, LOG_LEVELS[k])) b->log_errors = (sb_log_level)k;
    if (b->log_errors > SB_LOG_OFF) {
        buf_cstr(&err, "config key `log_errors`: `");
        buf_str(&err, level);
        buf_cstr(&err, "` is not one of trace, debug, info, warn, error, off");
        goto done;
    }
    const jval *stats = jgetc(&settings, "stats_interval");
    double seconds = stats == NULL ? 60 : sb_parse_seconds(stats->s);
    if (seconds < 0) {
        buf_cstr(&err, "config key `stats_interval`: must be a duration such as 60s, 5m or 0 (off)");
        goto done;
    }
    b->stats_millis = seconds * 1000;
    const jval *max_payload = jgetc(&settings, "max_payload");
    b->max_payload = max_payload == NULL ? 1024 : js_string_to_number(max_payload->s);
    if (!(b->max_payload == floor(b->max_payload) && b->max_payload >= 1 && !isinf(b->max_payload))) {
        buf_cstr(&err, "config key `max_payload`: must be a whole number of bytes, at least 1");
        goto done;
    }
    sb_num_from_double(b->max_payload, &b->max_payload_num);
    const jval *error_topic = jgetc(&settings, "error_topic");

    b->rules = sb_arena_alloc(a, rules->n * sizeof *b->rules);
    size_t i = 0;
    for (jval *r = rules->first; r != NULL; r = r->next, i++) {
        if (!parse_rule(&c, r, i, error_topic, &b->rules[i])) goto done;
        b->nrules++;
    }
    for (size_t x = 0; x < b->nrules; x++) {
        for (size_t y = 0; y < x; y++) {
            if (str_eq(b->rules[x].name, b->rules[y].name)) {
                err.len = 0;
                buf_cstr(&err, "rules: the name `");
                buf_str(&err, b->rules[x].name);
                buf_cstr(&err, "` is used twice");
                goto done;
            }
        }
    }
    b->cache = calloc(TOPIC_CACHE_SLOTS, sizeof *b->cache);
    if (b->cache == NULL) abort();
    ok = true;
done:
    free(c.label.p);
    if (!ok) {
        set_error(error, err.p == NULL ? "" : err.p, err.len);
        free(err.p);
        sb_bridge_free(b);
        return NULL;
    }
    free(err.p);
    return b;
}

void sb_bridge_free(sb_bridge *b) {
    if (b == NULL) return;
    if (b->cache != NULL) {
        for (size_t i = 0; i < TOPIC_CACHE_SLOTS; i++) {
            free(b->cache[i].mem);
            free(b->cache[i].prep);
        }
        free(b->cache);
    }
    sb_arena_free(&b->cfg);
    sb_arena_free(&b->scratch);
    free(b->out.p);
    free(b);
}

/* ------------------------------------------------------------------------------------------
 * Payload parsers: each yields, per quantity, a text, a number or an error. */

enum { R_TEXT, R_VALUE, R_ERROR };

typedef struct {
    sb_str quantity;
    int kind;
    sb_str text;       /* R_TEXT */
    sb_num value;      /* R_VALUE */
    const char *error; /* R_ERROR (NUL-terminated) */
} reading;

static const char *errf(sb_arena *a, buf *tmp, const char *s1, sb_str mid, const char *s2) {
    tmp->len = 0;
    buf_cstr(tmp, s1);
    buf_str(tmp, mid);
    buf_cstr(tmp, s2);
    buf_putc(tmp, 0);
    return buf_to_arena(tmp, a).ptr;
}

/* Splits `text` at every occurrence of `sep` (String.prototype.split). */
static sb_str *split(sb_arena *a, sb_str text, sb_str sep, size_t *n) {
    size_t count = 1;
    for (size_t i = 0; i + sep.len <= text.len;) {
        if (memcmp(text.ptr + i, sep.ptr, sep.len) == 0) {
            count++;
            i += sep.len;
        } else {
            i++;
        }
    }
    sb_str *out = sb_arena_alloc(a, count * sizeof *out);
    size_t k = 0, start = 0;
    for (size_t i = 0; i + sep.len <= text.len;) {
        if (memcmp(text.ptr + i, sep.ptr, sep.len) == 0) {
            out[k++] = (sb_str){text.ptr + start, i - start};
            i += sep.len;
            start = i;
        } else {
            i++;
        }
    }
    out[k++] = (sb_str){text.ptr + start, text.len - start};
    *n = k;
    return out;
}

static size_t parse_kv(sb_bridge *b, const rule *r, sb_str text, reading *out) {
    sb_arena *a = &b->scratch;
    bool blank = js_is_blank(text);
    size_t npairs = 0;
    sb_str *pairs = blank ? NULL : split(a, text, r->separator, &npairs);
    for (size_t f = 0; f < r->nfields; f++) {
        reading *rd = &out[f];
        rd->quantity = r->fields[f].quantity;
        rd->kind = R_ERROR;
        if (blank) {
            rd->error = "empty payload";
            continue;
        }
        sb_str key = r->fields[f].key;
        size_t hits = 0;
        sb_str value = {0};
        for (size_t k = 0; k < npairs; k++) {
            sb_str pair = pairs[k];
            if (js_is_blank(pair)) continue;
            size_t at = 0;
            while (at < pair.len && pair.ptr[at] != '=' && pair.ptr[at] != ':') at++;
            if (at == pair.len) continue; /* a fragment without a key matches no field */
            if (!str_eq(js_trim((sb_str){pair.ptr, at}), key)) continue;
            if (hits++ == 0) value = (sb_str){pair.ptr + at + 1, pair.len - at - 1};
        }
        if (hits > 1) rd->error = errf(a, &b->out, "key `", key, "` appears more than once");
        else if (hits == 0) rd->error = errf(a, &b->out, "missing key `", key, "`");
        else {
            rd->kind = R_TEXT;
            rd->text = value;
        }
    }
    return r->nfields;
}

static size_t parse_csv(sb_bridge *b, const rule *r, sb_str text, reading *out) {
    sb_arena *a = &b->scratch;
    size_t ncells = 0;
    sb_str *cells = js_is_blank(text) ? NULL : split(a, text, r->separator, &ncells);
    size_t n = 0;
    for (size_t i = 0; i < r->ncolumns; i++) {
        if (r->columns[i].ptr == NULL) continue;
        reading *rd = &out[n++];
        rd->quantity = r->columns[i];
        rd->kind = R_ERROR;
        if (ncells == 0) rd->error = "empty payload";
        else if (i >= ncells) {
            buf *t = &b->out;
            t->len = 0;
            buf_cstr(t, "missing column ");
            buf_u64(t, i + 1);
            buf_cstr(t, " (the payload has ");
            buf_u64(t, ncells);
            buf_cstr(t, ")");
            buf_putc(t, 0);
            rd->error = buf_to_arena(t, a).ptr;
        } else {
            rd->kind = R_TEXT;
            rd->text = cells[i];
        }
    }
    return n;
}

static size_t parse_json(sb_bridge *b, const rule *r, sb_str text, reading *out) {
    sb_arena *a = &b->scratch;
    const char *fail = NULL;
    jval *doc = NULL;
    if (js_is_blank(text)) {
        fail = "empty payload";
    } else {
        jparser p = {.s = text.ptr, .len = text.len, .a = a};
        doc = jparse(&p);
        if (doc == NULL) {
            sb_str msg = js_truncate(a, S(p.err), 80);
            fail = errf(a, &b->out, "unparsable JSON: ", msg, "");
        } else if (doc->t != J_OBJ) {
            fail = "JSON payload is not an object";
        }
    }
    for (size_t f = 0; f < r->nfields; f++) {
        reading *rd = &out[f];
        const field *fd = &r->fields[f];
        rd->quantity = fd->quantity;
        rd->kind = R_ERROR;
        if (fail != NULL) {
            rd->error = fail;
            continue;
        }
        const jval *v = doc;
        for (size_t s = 0; s < fd->nsegs && v != NULL; s++) v = v->t == J_OBJ ? jget(v, fd->segs[s]) : NULL;
        if (v == NULL) {
            rd->error = errf(a, &b->out, "missing field `", fd->key, "`");
        } else if (v->t == J_NUM) {
            rd->kind = R_VALUE;
            num_from_text(v->s.ptr, v->s.len, &rd->value);
        } else if (v->t == J_STR) {
            rd->kind = R_TEXT;
            rd->text = v->s;
        } else {
            const char *kind = v->t == J_NULL ? "null" : v->t == J_ARR ? "a list" : v->t == J_OBJ ? "an object" : "a boolean";
            b->out.len = 0;
            buf_cstr(&b->out, "field `");
            buf_str(&b->out, fd->key);
            buf_cstr(&b->out, "` is ");
            buf_cstr(&b->out, kind);
            buf_cstr(&b->out, ", not a number");
            buf_putc(&b->out, 0);
            rd->error = buf_to_arena(&b->out, a).ptr;
        }
    }
    return r->nfields;
}

/* The quantities of a rule for these captures (extract('') of the JavaScript version). */
static size_t rule_quantities(sb_bridge *b, const rule *r, const sb_str *caps, reading *out) {
    size_t n = 0;
    if (r->parser == P_PLAIN) {
        out[n++].quantity = render(&b->scratch, &r->quantity, caps, (sb_str){0}, (sb_str){0});
    } else if (r->parser == P_CSV) {
        for (size_t i = 0; i < r->ncolumns; i++)
            if (r->columns[i].ptr != NULL) out[n++].quantity = r->columns[i];
    } else {
        for (size_t i = 0; i < r->nfields; i++) out[n++].quantity = r->fields[i].quantity;
    }
    return n;
}

/* ------------------------------------------------------------------------------------------
 * Processing one message. */

static const qsettings *settings_of(const rule *r, sb_str quantity) {
    for (size_t k = 0; k < r->nperq; k++)
        if (str_eq(r->perq[k].name, quantity)) return &r->perq[k].s;
    return &r->base;
}

/* FNV-1a. */
static uint32_t topic_hash(sb_str t) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < t.len; i++) h = (h ^ (unsigned char)t.ptr[i]) * 16777619u;
    return h;
}

bool sb_match_topic(sb_bridge *b, sb_str topic, sb_match *m) {
    sb_arena_reset(&b->scratch);
    b->counters.messages++;
    m->cached = NULL;
    uint32_t h = topic_hash(topic);
    topic_entry *e = &b->cache[h & (TOPIC_CACHE_SLOTS - 1)];
    if (e->used && e->hash == h && str_eq(e->topic, topic)) {
        if (e->rule < 0) {
            b->counters.unmatched++;
            return false;
        }
        m->rule = (size_t)e->rule;
        m->caps = e->caps;
        m->cached = e;
        return true;
    }
    long found = -1;
    sb_str *caps = NULL;
    for (size_t i = 0; i < b->nrules && found < 0; i++) {
        rule *r = &b->rules[i];
        /* Cheap test before allocating the captures. */
        if (r->pat.nparts > 0 && !r->pat.parts[0].cap) {
            sb_str lit = r->pat.parts[0].lit;
            if (topic.len < lit.len || memcmp(topic.ptr, lit.ptr, lit.len) != 0) continue;
        }
        caps = sb_arena_alloc(&b->scratch, (r->pat.nnames + 1) * sizeof *caps);
        if (pattern_match(&b->scratch, &r->pat, topic, caps)) found = (long)i;
    }
    /* Remember the answer (the captures point into the entry's own copy of the topic). */
    free(e->mem);
    free(e->prep);
    memset(e, 0, sizeof *e);
    size_t ncaps = found >= 0 ? b->rules[found].pat.nnames : 0;
    e->mem = malloc(ncaps * sizeof(sb_str) + topic.len + 1);
    if (e->mem == NULL) abort();
    char *copy = e->mem + ncaps * sizeof(sb_str);
    memcpy(copy, topic.ptr, topic.len);
    e->caps = (sb_str *)(void *)e->mem;
    for (size_t k = 0; k < ncaps; k++) e->caps[k] = (sb_str){copy + (caps[k].ptr - topic.ptr), caps[k].len};
    e->topic = (sb_str){copy, topic.len};
    e->hash = h;
    e->rule = found;
    e->used = true;
    if (found < 0) {
        b->counters.unmatched++;
        return false;
    }
    m->rule = (size_t)found;
    m->caps = e->caps;
    m->cached = e;
    return true;
}

/* Fills in the topic's cached reading of a plain rule: its quantity, settings, output topic
 * and the start of its payload, `{"device":"aloys","temperature":`. */
static void prepare_plain(sb_bridge *b, const rule *r, topic_entry *e) {
    sb_arena *a = &b->scratch;
    sb_str quantity = render(a, &r->quantity, e->caps, (sb_str){0}, (sb_str){0});
    const qsettings *s = settings_of(r, quantity);
    sb_str out_topic = render(a, s->output, e->caps, quantity, (sb_str){0});
    buf *o = &b->out;
    o->len = 0;
    buf_cstr(o, "{\"device\":");
    buf_json(o, e->caps[r->device]);
    buf_putc(o, ',');
    buf_json(o, quantity);
    buf_putc(o, ':');
    e->prep = malloc(quantity.len + out_topic.len + o->len + 1);
    if (e->prep == NULL) abort();
    char *p = e->prep;
    memcpy(p, quantity.ptr, quantity.len);
    e->quantity = (sb_str){p, quantity.len};
    p += quantity.len;
    memcpy(p, out_topic.ptr, out_topic.len);
    e->out_topic = (sb_str){p, out_topic.len};
    p += out_topic.len;
    memcpy(p, o->p, o->len);
    e->prefix = (sb_str){p, o->len};
    e->s = s;
    e->reserved = false;
    for (size_t k = 0; k < 3; k++)
        if (str_is(quantity, RESERVED_QUANTITIES[k])) e->reserved = true;
    e->prepared = true;
}


const sb_result *sb_process(sb_bridge *b, const sb_match *m, sb_str topic, const uint8_t *payload, size_t len,
                            uint64_t now_ms) {
    sb_arena *a = &b->scratch;
    rule *r = &b->rules[m->rule];
    const sb_str *caps = m->caps;
    topic_entry *e = m->cached;
    if (e != NULL && r->parser == P_PLAIN && !e->prepared) prepare_plain(b, r, e);
    bool prepared = e != NULL && e->prepared;
    sb_result *res = &b->result;
    res->rule = m->rule;
    res->rule_name = r->name;
    res->replace = r->replace;
    res->n_outputs = 0;
    res->n_problems = 0;
    b->counters.matched++;
    r->counters.matched++;

    bool too_large = (double)len > b->max_payload;
    sb_str text;
    bool ok = true;
    if (too_large) {
        text = sb_utf8_lossy(a, payload, len < SB_RAW_IN_ERROR_MAX ? len : SB_RAW_IN_ERROR_MAX);
    } else if (sb_utf8_valid(payload, len)) {
        text = (sb_str){(const char *)payload, len};
    } else {
        ok = false;
        text = sb_utf8_lossy(a, payload, len);
    }

    reading readings[SB_MAX_OUTPUTS];
    size_t nreadings;
    if (too_large || !ok) {
        const char *error = "payload is not UTF-8";
        if (too_large) {
            buf *t = &b->out;
            t->len = 0;
            buf_cstr(t, "payload too large (");
            buf_u64(t, len);
            buf_cstr(t, " bytes; max_payload is ");
            buf_num(t, &b->max_payload_num);
            buf_cstr(t, ")");
            buf_putc(t, 0);
            error = buf_to_arena(t, a).ptr;
        }
        nreadings = rule_quantities(b, r, caps, readings);
        for (size_t i = 0; i < nreadings; i++) {
            readings[i].kind = R_ERROR;
            readings[i].error = error;
        }
    } else {
        switch (r->parser) {
        case P_PLAIN:
            nreadings = 1;
            readings[0].quantity = prepared ? e->quantity : render(a, &r->quantity, caps, (sb_str){0}, (sb_str){0});
            readings[0].kind = R_TEXT;
            readings[0].text = text;
            break;
        case P_KV: nreadings = parse_kv(b, r, text, readings); break;
        case P_CSV: nreadings = parse_csv(b, r, text, readings); break;
        default: nreadings = parse_json(b, r, text, readings); break;
        }
    }

    sb_str device = caps[r->device];
    res->device = device;
    bool cut;
    /* At most 256 bytes are at most 256 UTF-16 code units: no need to count. */
    res->raw = text.len <= SB_RAW_IN_ERROR_MAX ? text : utf16_prefix(a, text, SB_RAW_IN_ERROR_MAX, &cut);
    sb_str error_topics[SB_MAX_OUTPUTS];
    size_t nerror_topics = 0;
    if (b->ts_len == 0 || b->ts_ms != now_ms) {
        b->ts_ms = now_ms;
        b->ts_len = fmt_u64(b->ts_text, now_ms);
    }
    const char *ts = b->ts_text;
    size_t tslen = b->ts_len;
    buf *out = &b->out;

    for (size_t i = 0; i < nreadings; i++) {
        reading *rd = &readings[i];
        sb_str quantity = rd->quantity;
        /* A plain rule's one reading: its topic-dependent parts come from the topic cache. */
        const qsettings *s = prepared ? e->s : settings_of(r, quantity);
        sb_str out_topic = prepared ? e->out_topic : render(a, s->output, caps, quantity, (sb_str){0});
        const char *error = rd->kind == R_ERROR ? rd->error : NULL;
        sb_num value = {0};
        int decimals = -1; /* infinitely many */
        if (error == NULL && (!prepared || e->reserved)) {
            for (size_t k = 0; k < 3; k++) {
                if (str_is(quantity, RESERVED_QUANTITIES[k]))
                    error = errf(a, out, "`", quantity, "` cannot be a quantity name: the output payload uses that key itself");
            }
        }
        if (error == NULL && rd->kind == R_TEXT) error = sb_parse_number(a, rd->text, &value, &decimals);
        else if (rd->kind == R_VALUE) value = rd->value;
        if (error == NULL && value.kind != SB_NUM_FINITE) error = "not a finite number";
        if (error == NULL && s->has_min && value.v < s->min.v) {
            out->len = 0;
            buf_cstr(out, "out of range: ");
            buf_num(out, &value);
            buf_cstr(out, " is below min ");
            buf_num(out, &s->min);
            buf_putc(out, 0);
            error = buf_to_arena(out, a).ptr;
        }
        if (error == NULL && s->has_max && value.v > s->max.v) {
            out->len = 0;
            buf_cstr(out, "out of range: ");
            buf_num(out, &value);
            buf_cstr(out, " is above max ");
            buf_num(out, &s->max);
            buf_putc(out, 0);
            error = buf_to_arena(out, a).ptr;
        }
        if (error != NULL) {
            b->counters.garbage++;
            r->counters.garbage++;
            sb_str reason = S(error);
            res->problems[res->n_problems++] = (sb_problem){quantity, reason};
            sb_str err_topic = render(a, &r->error_topic, caps, quantity, out_topic);
            /* One error per topic: a payload-wide failure does not repeat itself on a shared topic. */
            bool seen = false;
            for (size_t k = 0; k < nerror_topics; k++)
                if (str_eq(error_topics[k], err_topic)) seen = true;
            if (seen) continue;
            error_topics[nerror_topics++] = err_topic;
            out->len = 0;
            buf_cstr(out, "{\"device\":");
            buf_json(out, device);
            buf_cstr(out, ",\"quantity\":");
            buf_json(out, quantity);
            buf_cstr(out, ",\"topic\":");
            buf_json(out, topic);
            buf_cstr(out, ",\"raw\":");
            buf_json(out, res->raw);
            buf_cstr(out, ",\"reason\":");
            buf_json(out, reason);
            buf_cstr(out, ",\"ts\":");
            buf_put(out, ts, tslen);
            buf_putc(out, '}');
            res->outputs[res->n_outputs++] = (sb_output){err_topic, buf_to_arena(out, a), true};
            continue;
        }
        b->counters.readings++;
        r->counters.readings++;
        sb_num rounded = value;
        if (s->round >= 0 && !(decimals >= 0 && decimals <= s->round)) sb_round_to(&value, s->round, &rounded);
        if (prepared) {
            /* prefix, number, `,"unit":"C","ts":`, ts, `}`, straight into the result. */
            char *p = sb_arena_alloc(a, e->prefix.len + 40 + s->unit_ts.len + tslen + 1);
            size_t o = e->prefix.len;
            memcpy(p, e->prefix.ptr, o);
            if (rounded.kind == SB_NUM_FINITE) o += sb_num_format(&rounded, p + o);
            else {
                memcpy(p + o, "null", 4); /* JSON.stringify(NaN) */
                o += 4;
            }
            memcpy(p + o, s->unit_ts.ptr, s->unit_ts.len);
            o += s->unit_ts.len;
            memcpy(p + o, ts, tslen);
            o += tslen;
            p[o++] = '}';
            res->outputs[res->n_outputs++] = (sb_output){out_topic, {p, o}, false};
            continue;
        }
        out->len = 0;
        buf_cstr(out, "{\"device\":");
        buf_json(out, device);
        buf_putc(out, ',');
        buf_json(out, quantity);
        buf_putc(out, ':');
        if (rounded.kind == SB_NUM_FINITE) buf_num(out, &rounded);
        else buf_cstr(out, "null"); /* JSON.stringify(NaN) */
        buf_str(out, s->unit_ts);
        buf_put(out, ts, tslen);
        buf_putc(out, '}');
        res->outputs[res->n_outputs++] = (sb_output){out_topic, buf_to_arena(out, a), false};
    }
    return res;
}

/* ------------------------------------------------------------------------------------------
 * Accessors and log lines. */

sb_log_level sb_bridge_log_level(const sb_bridge *b) { return b->log_errors; }
double sb_bridge_stats_millis(const sb_bridge *b) { return b->stats_millis; }
sb_counters sb_bridge_counters(const sb_bridge *b) { return b->counters; }
size_t sb_bridge_rule_count(const sb_bridge *b) { return b->nrules; }
sb_str sb_bridge_rule_name(const sb_bridge *b, size_t i) { return b->rules[i].name; }
sb_rule_counters sb_bridge_rule_counters(const sb_bridge *b, size_t i) { return b->rules[i].counters; }

sb_str sb_ready_line(sb_bridge *b) {
    buf *o = &b->out;
    o->len = 0;
    buf_cstr(o, "sensor-bridge ready: ");
    buf_u64(o, b->nrules);
    buf_cstr(o, " rule(s): ");
    for (size_t i = 0; i < b->nrules; i++) {
        const rule *r = &b->rules[i];
        if (i > 0) buf_cstr(o, "; ");
        buf_str(o, r->name);
        buf_cstr(o, " (");
        buf_str(o, r->pat.text);
        buf_cstr(o, ", ");
        buf_cstr(o, PARSER_NAMES[r->parser]);
        if (r->replace) buf_cstr(o, ", replace");
        buf_putc(o, ')');
    }
    return buf_to_arena(o, &b->scratch);
}

sb_str sb_stats_line(sb_bridge *b) {
    buf *o = &b->out;
    const sb_counters *c = &b->counters;
    o->len = 0;
    buf_cstr(o, "sensor-bridge stats (this instance): ");
    buf_u64(o, c->messages);
    buf_cstr(o, " messages, ");
    buf_u64(o, c->matched);
    buf_cstr(o, " matched, ");
    buf_u64(o, c->readings);
    buf_cstr(o, " readings out, ");
    buf_u64(o, c->garbage);
    buf_cstr(o, " garbage, ");
    buf_u64(o, c->unmatched);
    buf_cstr(o, " not matched; ");
    for (size_t i = 0; i < b->nrules; i++) {
        const rule *r = &b->rules[i];
        if (i > 0) buf_cstr(o, "; ");
        buf_str(o, r->name);
        buf_cstr(o, ": ");
        buf_u64(o, r->counters.matched);
        buf_cstr(o, " matched, ");
        buf_u64(o, r->counters.readings);
        buf_cstr(o, " readings, ");
        buf_u64(o, r->counters.garbage);
        buf_cstr(o, " garbage");
    }
    return buf_to_arena(o, &b->scratch);
}

sb_str sb_problem_line(sb_bridge *b, const sb_result *r, size_t i, sb_str topic) {
    buf *o = &b->out;
    o->len = 0;
    buf_cstr(o, "rule ");
    buf_str(o, r->rule_name);
    buf_cstr(o, ": garbage ");
    buf_str(o, r->problems[i].quantity);
    buf_cstr(o, " from device ");
    buf_str(o, r->device);
    buf_cstr(o, " on ");
    buf_str(o, topic);
    buf_cstr(o, ": ");
    buf_str(o, r->problems[i].reason);
    buf_cstr(o, " (raw ");
    buf_json(o, r->raw);
    buf_putc(o, ')');
    return buf_to_arena(o, &b->scratch);
}
