/*
 * presence logic: pure functions with no Wasm or MQTT binding types, so that they compile
 * both into the plugin (presence.c) and into the native test program (test_presence.c).
 *
 * JSON string escaping, the presence payloads, topic building, the `exclude` prefix list
 * (parsed from the JSON the broker hands over) and config value checks.
 */
#ifndef PRESENCE_LOGIC_H
#define PRESENCE_LOGIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A borrowed byte string (not NUL-terminated). */
typedef struct {
    const char *ptr;
    size_t len;
} pstr_t;

/* A view of a NUL-terminated C string. */
pstr_t pstr(const char *s);

/* A growable byte buffer. After an allocation failure `failed` is set and further writes
 * are ignored; the caller checks `failed` once at the end. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
    bool failed;
} pbuf_t;

void pbuf_init(pbuf_t *b);
void pbuf_free(pbuf_t *b);
void pbuf_put(pbuf_t *b, const char *bytes, size_t len);
void pbuf_puts(pbuf_t *b, const char *s);
void pbuf_put_u64(pbuf_t *b, uint64_t n);

/* Appends `s` as a JSON string literal (with the quotes): `"` and `\` are escaped, control
 * characters become \b \f \n \r \t or \u00XX, and everything else (UTF-8 included) is
 * copied as is. */
void presence_json_string(pbuf_t *out, pstr_t s);

/* MQTT protocol revision of a client. */
typedef enum {
    PRESENCE_MQTT31,
    PRESENCE_MQTT311,
    PRESENCE_MQTT5,
} presence_protocol_t;

/* "3.1", "3.1.1" or "5". */
const char *presence_protocol_name(presence_protocol_t p);

/* A connected client, as the online payload describes it. */
typedef struct {
    pstr_t client_id;
    bool has_username;
    pstr_t username;
    pstr_t peer;
    presence_protocol_t protocol;
} presence_client_t;

/* {"client_id":..,"online":true,"username":..|null,"peer":..,"protocol":..,"since":ms} */
void presence_online_payload(pbuf_t *out, const presence_client_t *c, uint64_t since_ms);

/* {"client_id":..,"online":false,"reason":..,"since":ms} */
void presence_offline_payload(pbuf_t *out, pstr_t client_id, pstr_t reason, uint64_t since_ms);

/* Whether a client id can be the last part of a topic name: non-empty and free of the
 * wildcards `+` and `#` and of NUL (a `/` just adds topic levels). */
bool presence_client_id_ok(pstr_t id);

/* Writes `{prefix}/{id}`; false (and nothing written) when the id is not usable. */
bool presence_topic(pbuf_t *out, pstr_t prefix, pstr_t id);

/* Checks a `prefix` config value and trims trailing slashes off it (into *trimmed);
 * NULL when usable, else why not. */
const char *presence_check_prefix(pstr_t text, pstr_t *trimmed);

/* Parses `true` / `false` (a config scalar); NULL when it is one, else why not. */
const char *presence_parse_bool(pstr_t text, bool *out);

/* Client-id prefixes that are not reported. */
typedef struct {
    char **items;
    size_t *lens;
    size_t count;
} presence_prefixes_t;

void presence_prefixes_free(presence_prefixes_t *p);

/* Parses the `exclude` config value: a JSON list of strings (`["$bridge/", "test-"]`); a
 * bare string that is not JSON is taken as a list of one. NULL on success (replacing *out),
 * else a static message saying what is wrong (*out untouched). */
const char *presence_parse_prefixes(pstr_t json, presence_prefixes_t *out);

/* Whether `id` starts with one of the prefixes. */
bool presence_excluded(const presence_prefixes_t *p, pstr_t id);

/* Whether a disconnect with this reason means the client is offline: every reason except
 * `taken over` (a new connection with the same client id took the session, so the client
 * is still online, whatever the order the two events arrive in). */
bool presence_reports_disconnect(pstr_t reason);

#endif
