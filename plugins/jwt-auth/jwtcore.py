"""jwt-auth's logic, free of any broker binding so that it runs (and is unit-tested) natively.

- JWS compact tokens signed with HS256 (HMAC-SHA256) or RS256 (RSASSA-PKCS1-v1_5 with
  SHA-256), verified with nothing but the standard library: `hmac`/`hashlib` and Python's
  big integers (`pow(signature, e, n)`), the RSA key parsed from its PEM/DER by hand;
- the registered claims `exp`, `nbf`, `iss`, `aud` and the user name claim;
- the `publish` / `subscribe` claims turned into topic filters (`%c`, `%u` substituted) and
  MQTT topic matching: a topic name against a filter, and whether a filter is covered by
  another one (for SUBSCRIBE).

`app.py` is the thin layer that connects this to the broker's WIT interface.
"""

import base64
import binascii
import hashlib
import hmac
import json
import re

# --- errors -------------------------------------------------------------------------------


class ConfigError(ValueError):
    """The plugin's `config:` section is unusable (init refuses to load the plugin)."""


class TokenError(ValueError):
    """A token is refused; the message goes to the broker's log, never to the client.

    `credentials` is True when the token itself is bad (signature, format, time, issuer: the
    client gets "bad user name or password") and False when a good token does not entitle
    this client (another user name: "not authorized").
    """

    def __init__(self, message: str, credentials: bool = True):
        super().__init__(message)
        self.credentials = credentials


# --- base64url and DER ----------------------------------------------------------------------

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 section 2): any other character is an error."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise TokenError("token is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _der_read(data: bytes, pos: int, tag: int):
    """Reads one DER element with `tag` at `pos`; returns (contents, position after it)."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ConfigError(f"rs256_public_key: expected DER tag 0x{tag:02x} at byte {pos}")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ConfigError("rs256_public_key: bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ConfigError("rs256_public_key: truncated DER")
    return data[pos : pos + length], pos + length


def _der_uint(data: bytes, pos: int):
    contents, pos = _der_read(data, pos, 0x02)
    if not contents or contents[0] & 0x80:
        raise ConfigError("rs256_public_key: RSA numbers must be positive integers")
    return int.from_bytes(contents, "big"), pos


# OID 1.2.840.113549.1.1.1 (rsaEncryption), DER-encoded with its tag and length.
_RSA_ENCRYPTION_OID = bytes.fromhex("06092a864886f70d010101")


def _rsa_public_key_der(der: bytes):
    """(n, e) from a PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }."""
    seq, end = _der_read(der, 0, 0x30)
    if end != len(der):
        raise ConfigError("rs256_public_key: trailing bytes after the key")
    n, pos = _der_uint(seq, 0)
    e, pos = _der_uint(seq, pos)
    if pos != len(seq):
        raise ConfigError("rs256_public_key: unexpected fields in RSAPublicKey")
    return n, e


def parse_rsa_public_key(pem: str):
    """(n, e) from a PEM `BEGIN PUBLIC KEY` (X.509 SubjectPublicKeyInfo, RFC 5280) or
    `BEGIN RSA PUBLIC KEY` (PKCS#1) block."""
    match = re.search(
        r"-----BEGIN (RSA )?PUBLIC KEY-----(.*?)-----END (RSA )?PUBLIC KEY-----", pem, re.S
    )
    if not match or match.group(1) != match.group(3):
        raise ConfigError("rs256_public_key: no PEM `BEGIN PUBLIC KEY` block found")
    try:
        der = base64.b64decode("".join(match.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("rs256_public_key: the PEM body is not base64") from None
    if match.group(1):
        n, e = _rsa_public_key_der(der)
    else:
        # SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier, BIT STRING subjectPublicKey }
        spki, end = _der_read(der, 0, 0x30)
        if end != len(der):
            raise ConfigError("rs256_public_key: trailing bytes after the key")
        algorithm, pos = _der_read(spki, 0, 0x30)
        if not algorithm.startswith(_RSA_ENCRYPTION_OID):
            raise ConfigError("rs256_public_key: not an RSA key (algorithm is not rsaEncryption)")
        bits, pos = _der_read(spki, pos, 0x03)
        if pos != len(spki) or not bits or bits[0] != 0:
            raise ConfigError("rs256_public_key: bad subjectPublicKey BIT STRING")
        n, e = _rsa_public_key_der(bits[1:])
    if n.bit_length() < 2048:
        raise ConfigError(f"rs256_public_key: {n.bit_length()}-bit modulus; at least 2048 bits required")
    if e < 3 or e % 2 == 0:
        raise ConfigError("rs256_public_key: bad public exponent")
    return n, e


# --- signatures -------------------------------------------------------------------------------

# DER of DigestInfo { AlgorithmIdentifier { sha256, NULL }, OCTET STRING (32 bytes) } up to
# the digest itself (RFC 8017 section 9.2, note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def emsa_pkcs1_v1_5(message: bytes, k: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(message) into `k` bytes (RFC 8017 section 9.2)."""
    t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    if k < len(t) + 11:
        raise TokenError("RSA modulus too short")
    return b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def rs256_verify(n: int, e: int, signing_input: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 verification with SHA-256 (RFC 8017 section 8.2.2)."""
    k = (n.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= n:
        return False
    em = pow(s, e, n).to_bytes(k, "big")
    # Compare against the one valid encoding instead of parsing `em` (no parser to fool).
    return hmac.compare_digest(em, emsa_pkcs1_v1_5(signing_input, k))


def hs256_sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


# --- config -----------------------------------------------------------------------------------


class Settings:
    """The plugin's config, validated."""

    def __init__(self, config):
        settings = dict(config)
        known = {
            "hs256_secret",
            "rs256_public_key",
            "issuer",
            "audience",
            "username_claim",
            "leeway",
            "require_exp",
        }
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        self.hs256_secret = None
        secret = settings.get("hs256_secret", "")
        if secret:
            if len(secret.encode("utf-8")) < 32:
                raise ConfigError("hs256_secret must be at least 32 bytes (256 bits, RFC 7518 section 3.2)")
            self.hs256_secret = secret.encode("utf-8")
        self.rsa_key = None
        pem = settings.get("rs256_public_key", "")
        if pem.strip():
            self.rsa_key = parse_rsa_public_key(pem)
        if self.hs256_secret is None and self.rsa_key is None:
            raise ConfigError("configure hs256_secret, rs256_public_key or both")
        self.issuer = settings.get("issuer") or None
        self.audience = settings.get("audience") or None
        self.username_claim = settings.get("username_claim") or "sub"
        try:
            self.leeway = int(settings.get("leeway") or "30")
        except ValueError:
            raise ConfigError("leeway must be a whole number of seconds") from None
        if not 0 <= self.leeway <= 3600:
            raise ConfigError("leeway must be between 0 and 3600 seconds")
        require_exp = (settings.get("require_exp") or "true").lower()
        if require_exp not in ("true", "false"):
            raise ConfigError("require_exp must be true or false")
        self.require_exp = require_exp == "true"

    def algorithms(self):
        """The `alg` values a token may carry: those with a configured key."""
        algs = []
        if self.hs256_secret is not None:
            algs.append("HS256")
        if self.rsa_key is not None:
            algs.append("RS256")
        return algs


# --- tokens -------------------------------------------------------------------------------


def _json_object(part: bytes, what: str) -> dict:
    try:
        value = json.loads(part.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TokenError(f"token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def _numeric_date(claims: dict, name: str):
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenError(f"claim `{name}` is not a number")
    return value


def verify_token(settings: Settings, token: str, now_millis: int) -> dict:
    """The claims of a valid token; raises TokenError otherwise.

    Checks, in order: the compact form, the header (`alg` must be one with a configured key:
    `none` and algorithm confusion are refused before any cryptography), the signature, then
    `exp`, `nbf`, `iss` and `aud`.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("password is not a JWT (expected header.payload.signature)")
    header = _json_object(b64url_decode(parts[0]), "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenError("token header has no `alg`")
    if alg.lower() == "none":
        raise TokenError("unsigned token (alg none) refused")
    if alg not in settings.algorithms():
        raise TokenError(f"token alg {alg[:16]} is not configured (configured: {', '.join(settings.algorithms())})")
    if "crit" in header:
        raise TokenError("token header has `crit` extensions, none of which are understood")
    signature = b64url_decode(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    if alg == "HS256":
        good = hmac.compare_digest(signature, hs256_sign(settings.hs256_secret, signing_input))
    else:
        n, e = settings.rsa_key
        good = rs256_verify(n, e, signing_input, signature)
    if not good:
        raise TokenError(f"bad {alg} signature")
    claims = _json_object(b64url_decode(parts[1]), "payload")

    now = now_millis / 1000
    exp = _numeric_date(claims, "exp")
    if exp is None and settings.require_exp:
        raise TokenError("token has no `exp` claim (set require_exp: false to accept such tokens)")
    if exp is not None and now >= exp + settings.leeway:
        raise TokenError(f"token expired {int(now - exp)} s ago")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and now + settings.leeway < nbf:
        raise TokenError(f"token not valid for another {int(nbf - now)} s (nbf)")
    if settings.issuer is not None and claims.get("iss") != settings.issuer:
        raise TokenError("token issuer (iss) does not match")
    if settings.audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if settings.audience not in audiences:
            raise TokenError("token audience (aud) does not match")
    return claims


def token_username(settings: Settings, claims: dict, username):
    """The user name the client acts as; raises TokenError when the token is for another user.

    With a user name in CONNECT, the token's user name claim must be present and equal it.
    Without one, the claim's value is used (for `%u`), or "" when the claim is absent.
    """
    claim = claims.get(settings.username_claim)
    if claim is not None and not isinstance(claim, str):
        raise TokenError(f"claim `{settings.username_claim}` is not a string")
    if username is not None and username != "":
        if claim is None:
            raise TokenError(f"token has no `{settings.username_claim}` claim", credentials=False)
        if not hmac.compare_digest(claim.encode("utf-8"), username.encode("utf-8")):
            raise TokenError(
                f"token is for another user (claim `{settings.username_claim}` differs from the user name)",
                credentials=False,
            )
        return username
    return claim or ""


# --- topic filters ----------------------------------------------------------------------------


def valid_filter(f: str) -> bool:
    """An MQTT topic filter: non-empty, `+` alone in its level, `#` alone and last."""
    if not f or "\x00" in f:
        return False
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def substitute(f: str, client_id: str, username: str):
    """`%c` and `%u` replaced; None when a value would change the filter's structure (it holds
    `/`, `+` or `#`, or is empty): such a filter grants nothing (as Mosquitto does)."""
    for placeholder, value in (("%c", client_id), ("%u", username)):
        if placeholder in f:
            if not value or any(ch in value for ch in "/+#"):
                return None
            f = f.replace(placeholder, value)
    return f


def claim_filters(claims: dict, name: str, client_id: str, username: str):
    """The topic filters of claim `name` (a list of strings, or one string), substituted."""
    value = claims.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"claim `{name}` must be a list of topic filters", credentials=False)
    filters = []
    for raw in value:
        if not valid_filter(raw):
            raise TokenError(f"claim `{name}` holds an invalid topic filter {raw[:64]!r}", credentials=False)
        f = substitute(raw, client_id, username)
        if f is not None:
            filters.append(f)
    return filters


def topic_matches(f: str, topic: str) -> bool:
    """Whether topic name `topic` matches filter `f` (MQTT 3.1.1 section 4.7)."""
    # A filter starting with a wildcard does not match topics starting with `$`.
    if topic.startswith("$") and f[:1] in ("+", "#"):
        return False
    fl = f.split("/")
    tl = topic.split("/")
    for i, level in enumerate(fl):
        if level == "#":
            return True  # also matches the parent level: `a/#` matches `a`
        if i >= len(tl):
            return False
        if level != "+" and level != tl[i]:
            return False
    return len(fl) == len(tl)


def strip_shared(f: str) -> str:
    """`$share/group/filter` -> `filter` (a shared subscription receives what `filter` does)."""
    if f.startswith("$share/"):
        parts = f.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return f


def filter_covers(granted: str, requested: str) -> bool:
    """Whether every topic matching `requested` also matches `granted`."""
    requested = strip_shared(requested)
    if requested.startswith("$") and granted[:1] in ("+", "#"):
        return False
    gl = granted.split("/")
    rl = requested.split("/")
    for i, g in enumerate(gl):
        if g == "#":
            return True
        if i >= len(rl):
            return False
        r = rl[i]
        if r == "#":
            return False  # `#` reaches deeper than anything but `#`
        if g == "+":
            continue  # covers a literal level and `+`
        if r != g:
            return False  # a literal covers only itself
    return len(gl) == len(rl)


# --- the rules kept in the key-value store ------------------------------------------------------

KV_PREFIX = "claims/"


def rules_key(client_id: str) -> str:
    return KV_PREFIX + client_id


def encode_rules(publish, subscribe) -> bytes:
    return json.dumps({"publish": publish, "subscribe": subscribe}, separators=(",", ":")).encode("utf-8")


def decode_rules(data: bytes):
    rules = json.loads(data.decode("utf-8"))
    return rules["publish"], rules["subscribe"]


def decide(rules, action: str, topic: str) -> bool:
    """Whether `rules` (publish filters, subscribe filters) allow `action` on `topic`;
    `action` is `publish`, `subscribe` or `deliver`."""
    publish, subscribe = rules
    if action == "publish":
        return any(topic_matches(f, topic) for f in publish)
    if action == "deliver":
        return any(topic_matches(f, topic) for f in subscribe)
    if action == "subscribe":
        return any(filter_covers(f, topic) for f in subscribe)
    return False
