/*
 * The rule logic of the C sensor bridge, without any host import: sensor_bridge.c connects it
 * to the broker (WIT mqtt-broker:plugin@0.2.0, world `transformer`), and test_bridge.c runs it
 * natively. It is a port of ../sensor-bridge/lib/bridge.js (same config, same rules, same
 * output bytes, same error texts).
 *
 * Use: `sb_bridge_new` parses the plugin's config (the key/value pairs `init` receives, with
 * `rules` as JSON) or returns an error naming the rule and the key. Per message,
 * `sb_match_topic` tries the rules on the topic (nothing else is needed for a topic of no
 * rule), then `sb_process` reads the payload and returns the messages to publish. Everything
 * a call returns lives in the bridge's scratch memory until the next `sb_match_topic`.
 */
#ifndef SENSOR_BRIDGE_C_BRIDGE_H
#define SENSOR_BRIDGE_C_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** The broker accepts at most this many additional messages per transform call. */
#define SB_MAX_OUTPUTS 64
/** Longest raw payload (in UTF-16 code units, as the JavaScript version counts) copied into an error. */
#define SB_RAW_IN_ERROR_MAX 256

/** A byte string that is not NUL-terminated (UTF-8 unless said otherwise). */
typedef struct {
    const char *ptr;
    size_t len;
} sb_str;

/** A chunk of an arena (opaque). */
typedef struct sb_chunk sb_chunk;

/** A bump allocator: many small allocations, all released at once by `sb_arena_reset`. */
typedef struct {
    sb_chunk *first; /**< kept across resets */
    sb_chunk *cur;   /**< where allocations go */
    size_t total;    /**< bytes handed out since the last reset */
} sb_arena;

/** `n` bytes aligned to 8 from `a` (aborts when memory is exhausted). */
void *sb_arena_alloc(sb_arena *a, size_t n);
/** Releases everything allocated from `a`, keeping one chunk (sized for the peak) for reuse. */
void sb_arena_reset(sb_arena *a);
/** Releases all memory of `a`. */
void sb_arena_free(sb_arena *a);

/** One key/value pair of the plugin's `config:` section. */
typedef struct {
    sb_str key;
    sb_str value;
} sb_pair;

/** Level of the per-garbage log line (`log_errors`); the first five are the host's levels. */
typedef enum {
    SB_LOG_TRACE,
    SB_LOG_DEBUG,
    SB_LOG_INFO,
    SB_LOG_WARN,
    SB_LOG_ERROR,
    SB_LOG_OFF,
} sb_log_level;

/** A parsed config plus its counters (opaque). */
typedef struct sb_bridge sb_bridge;

/** One message to publish: a structured reading, or an error report (`error`). */
typedef struct {
    sb_str topic;
    sb_str payload; /**< a JSON object, UTF-8 */
    bool error;
} sb_output;

/** A garbage reading, for the log. */
typedef struct {
    sb_str quantity;
    sb_str reason;
} sb_problem;

/** What `sb_process` decided for one message. */
typedef struct {
    size_t rule;      /**< index of the matching rule */
    sb_str rule_name; /**< its name */
    sb_str device;    /**< the `{device}` capture */
    bool replace;     /**< drop the raw message (the rule's `replace: true`) */
    size_t n_outputs;
    sb_output outputs[SB_MAX_OUTPUTS];
    size_t n_problems;
    sb_problem problems[SB_MAX_OUTPUTS];
    sb_str raw; /**< the payload text as quoted in errors (cut, invalid UTF-8 replaced) */
} sb_result;

/** A topic matched by a rule (valid until the next `sb_match_topic`). */
typedef struct {
    size_t rule;  /**< index of the first rule whose pattern matches */
    sb_str *caps; /**< the pattern's captures, in the order of its placeholders */
    void *cached; /**< internal: the topic's entry in the bridge's topic cache, if any */
} sb_match;

/** Counters of a bridge instance (as the JavaScript version counts). */
typedef struct {
    uint64_t messages;  /**< topics tried */
    uint64_t matched;   /**< topics a rule matched */
    uint64_t readings;  /**< structured readings published */
    uint64_t garbage;   /**< garbage readings (each is also a problem) */
    uint64_t unmatched; /**< topics no rule matched */
} sb_counters;

/** Counters of one rule. */
typedef struct {
    uint64_t matched;
    uint64_t readings;
    uint64_t garbage;
} sb_rule_counters;

/**
 * Parses the config pairs. On a mistake returns NULL and sets `*error` to a malloc'ed,
 * NUL-terminated message naming the rule and the key (free it with `free`).
 */
sb_bridge *sb_bridge_new(const sb_pair *pairs, size_t n, char **error);
/** Frees a bridge. */
void sb_bridge_free(sb_bridge *b);

/**
 * Tries the rules on `topic`, in order; true (and `*m`) for the first that matches. Releases
 * the scratch memory of the previous message and counts the message. What depends only on the
 * topic (the match, and for `plain` rules the output topic and the start of the payload) is
 * remembered per topic in a cache of TOPIC_CACHE_SLOTS entries (bridge.c), so that a device's
 * next reading skips that work.
 */
bool sb_match_topic(sb_bridge *b, sb_str topic, sb_match *m);
/**
 * Turns a matched message into the messages to publish. `now_ms` is the broker's wall-clock
 * time in milliseconds (the `ts` of the outputs). The result lives until the next
 * `sb_match_topic`.
 */
const sb_result *sb_process(sb_bridge *b, const sb_match *m, sb_str topic, const uint8_t *payload,
                            size_t payload_len, uint64_t now_ms);

/** The level of the per-garbage log line. */
sb_log_level sb_bridge_log_level(const sb_bridge *b);
/** How often the counters are logged, in milliseconds (0: never). */
double sb_bridge_stats_millis(const sb_bridge *b);
/** The instance counters. */
sb_counters sb_bridge_counters(const sb_bridge *b);
/** Number of rules. */
size_t sb_bridge_rule_count(const sb_bridge *b);
/** Name of rule `i`. */
sb_str sb_bridge_rule_name(const sb_bridge *b, size_t i);
/** Counters of rule `i`. */
sb_rule_counters sb_bridge_rule_counters(const sb_bridge *b, size_t i);

/** `sensor-bridge ready: N rule(s): ...` (scratch memory). */
sb_str sb_ready_line(sb_bridge *b);
/** `sensor-bridge stats (this instance): ...` (scratch memory). */
sb_str sb_stats_line(sb_bridge *b);
/** The log line of problem `i` of `r` for a message on `topic` (scratch memory). */
sb_str sb_problem_line(sb_bridge *b, const sb_result *r, size_t i, sb_str topic);

/* Building blocks, exposed for the native tests. Strings they return are in `a`. */

/** A number as JavaScript holds it: its double and its shortest decimal digits. */
typedef struct {
    double v;
    int kind;     /**< SB_NUM_FINITE, SB_NUM_INF or SB_NUM_NAN */
    bool neg;     /**< sign (also of zero) */
    int nd;       /**< significant digits, 0 for zero */
    int point;    /**< value = 0.d1d2...dnd × 10^point */
    char d[20];   /**< the digits */
} sb_num;

/** `sb_num.kind`: a finite number. */
#define SB_NUM_FINITE 0
/** `sb_num.kind`: plus or minus infinity. */
#define SB_NUM_INF 1
/** `sb_num.kind`: not a number. */
#define SB_NUM_NAN 2

/**
 * parseNumber of the JavaScript version: a reading's text to a number. Returns NULL with
 * `*out` and `*decimals` (digits after the point; -1 for an exponent, i.e. infinitely many)
 * set, or the reason it is garbage.
 */
const char *sb_parse_number(sb_arena *a, sb_str text, sb_num *out, int *decimals);
/** Formats `n` as JavaScript's `String(n)` does; returns the length written to `out` (≥ 32 bytes). */
size_t sb_num_format(const sb_num *n, char *out);
/** `n` from a double (shortest round-trip digits). */
void sb_num_from_double(double v, sb_num *n);
/** roundTo of the JavaScript version: half away from zero, without binary artefacts. */
void sb_round_to(const sb_num *v, int decimals, sb_num *out);
/** parseSeconds of the JavaScript version (`60`, `60s`, `500ms`, `5m`, `1h`); -1 if invalid. */
double sb_parse_seconds(sb_str text);
/** Whether `bytes` is valid UTF-8. */
bool sb_utf8_valid(const uint8_t *bytes, size_t len);
/** Decodes UTF-8 the way the JavaScript version does (one U+FFFD per bad byte). */
sb_str sb_utf8_lossy(sb_arena *a, const uint8_t *bytes, size_t len);
/** JSON.stringify of a string. */
sb_str sb_json_quote(sb_arena *a, sb_str s);

#endif
