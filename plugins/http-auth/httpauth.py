"""http-auth's logic, free of any broker binding so that it runs (and is unit-tested) natively:
the config, the request sent to the authentication service, and how its answer is read.

`app.py` is the thin layer that connects this to the broker's WIT interface.
"""

import base64
import json
import urllib.parse

ALLOW = "allow"
DENY = "deny"
IGNORE = "ignore"
FAILED = "failed"  # no usable answer: `on_failure` decides

METHODS = ("POST", "PUT", "GET")


class ConfigError(ValueError):
    """The plugin's `config:` section is unusable (init refuses to load the plugin)."""


class Settings:
    """The plugin's config, validated."""

    def __init__(self, config):
        settings = dict(config)
        known = {"url", "method", "timeout_ms", "headers", "on_failure"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        self.url = settings.get("url", "").strip()
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("url is required: http://host[:port]/path or https://...")
        self.method = (settings.get("method") or "POST").upper()
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}")
        self.timeout_ms = None
        if settings.get("timeout_ms"):
            try:
                self.timeout_ms = int(settings["timeout_ms"])
            except ValueError:
                raise ConfigError("timeout_ms must be a whole number of milliseconds") from None
            if not 1 <= self.timeout_ms <= 60_000:
                raise ConfigError("timeout_ms must be between 1 and 60000")
        self.headers = []
        if settings.get("headers"):
            try:
                headers = json.loads(settings["headers"])
            except ValueError:
                raise ConfigError("headers must be a map of header names to values") from None
            if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
                for k, v in headers.items()
            ):
                raise ConfigError("headers must be a map of header names to text values")
            self.headers = [(k, str(v)) for k, v in headers.items()]
        if not any(k.lower() == "content-type" for k, _ in self.headers) and self.method != "GET":
            self.headers.append(("Content-Type", "application/json"))
        if not any(k.lower() == "accept" for k, _ in self.headers):
            self.headers.append(("Accept", "application/json"))
        self.on_failure = (settings.get("on_failure") or DENY).lower()
        if self.on_failure not in (DENY, IGNORE):
            raise ConfigError("on_failure must be deny or ignore")


def peer_host(peer_address: str) -> str:
    """`1.2.3.4:5678` -> `1.2.3.4`; `[::1]:5678` -> `::1`."""
    if peer_address.startswith("["):
        return peer_address[1 : peer_address.find("]")] if "]" in peer_address else peer_address
    host, sep, _port = peer_address.rpartition(":")
    return host if sep else peer_address


def password_fields(password):
    """(text, encoding): the password as UTF-8 text (`utf8`), as base64 when its bytes are
    not UTF-8 (`base64`), or (None, None) when the client sent none."""
    if password is None:
        return None, None
    data = bytes(password)
    try:
        return data.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def request_params(client_id: str, username, password, peer_address: str, protocol: str) -> dict:
    """The fields sent to the service."""
    text, encoding = password_fields(password)
    return {
        "clientid": client_id,
        "username": username,
        "password": text,
        "password_encoding": encoding,
        "peerhost": peer_host(peer_address),
        "protocol": protocol,
    }


def build_request(settings: Settings, params: dict):
    """(method, url, headers, body): a JSON body for POST and PUT; for GET the fields go in
    the query string (absent values as empty strings)."""
    if settings.method == "GET":
        query = urllib.parse.urlencode({k: "" if v is None else v for k, v in params.items()})
        sep = "&" if urllib.parse.urlsplit(settings.url).query else "?"
        return "GET", f"{settings.url}{sep}{query}", list(settings.headers), b""
    body = json.dumps(params, separators=(",", ":")).encode("utf-8")
    return settings.method, settings.url, list(settings.headers), body


def read_answer(status: int, body: bytes):
    """(verdict, message) from the service's response: ALLOW, DENY or IGNORE when it answered
    200 with `{"result": "allow" | "deny" | "ignore"}`, else FAILED with the reason."""
    if status != 200:
        return FAILED, f"authentication service answered HTTP {status}"
    try:
        answer = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return FAILED, "authentication service answered 200 without a JSON body"
    result = answer.get("result") if isinstance(answer, dict) else None
    if result not in (ALLOW, DENY, IGNORE):
        return FAILED, 'authentication service answer has no "result" of allow, deny or ignore'
    message = "authentication service: " + result
    reason = answer.get("reason")
    if isinstance(reason, str) and reason:
        message += f" ({reason[:200]})"
    return result, message
