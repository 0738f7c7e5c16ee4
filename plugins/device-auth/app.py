"""device-auth: per-device MQTT credentials without a password file.

A device's password is the lowercase hex HMAC-SHA256 of its client id, keyed with a secret
from the plugin config; its user name must equal its client id. See README.md.
"""

import hashlib
import hmac

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    AuthOutcome_Abstain,
    AuthOutcome_Allow,
    AuthOutcome_Deny,
    ClientInfo,
    Credentials,
    Denial,
    DenyReason,
)

# Set by init(); None until then, so a missing init can never mean "no secret".
_secret = None
# User names this plugin leaves to the next authenticator (e.g. an operator in a password file).
_abstain_users = frozenset()


def expected_password(secret: bytes, client_id: str) -> str:
    """The password a device with this client id must present."""
    return hmac.new(secret, client_id.encode("utf-8"), hashlib.sha256).hexdigest()


# Run the HMAC once while componentize-py pre-initializes this module at build time: hashlib
# imports its backends lazily, and with `--stub-wasi` the component has no filesystem to
# import from at run time.
expected_password(b"warm-up", "warm-up")
hmac.compare_digest("a", "a")


def _deny(reason: DenyReason, message: str) -> AuthOutcome_Deny:
    return AuthOutcome_Deny(Denial(reason, message))


class Lifecycle(exports.Lifecycle):
    def init(self, config):
        global _secret, _abstain_users
        settings = dict(config)
        secret = settings.get("secret", "")
        if len(secret) < 16:
            raise Err("config key `secret` is required and must be at least 16 characters")
        _secret = secret.encode("utf-8")
        users = settings.get("abstain_users", "")
        _abstain_users = frozenset(u.strip() for u in users.split(",") if u.strip())
        host.log(host.LogLevel.INFO, f"device-auth ready ({len(_abstain_users)} pass-through users)")


class Authenticate(exports.Authenticate):
    def authenticate(self, client: ClientInfo, credentials: Credentials):
        if _secret is None:
            return _deny(DenyReason.NOT_AUTHORIZED, "plugin not initialised")
        username = credentials.username
        if username is not None and username in _abstain_users:
            return AuthOutcome_Abstain()
        if username != client.client_id:
            return _deny(DenyReason.NOT_AUTHORIZED, "user name must equal the client id")
        password = credentials.password
        if password is None:
            return _deny(DenyReason.BAD_CREDENTIALS, "no password")
        try:
            given = bytes(password).decode("ascii").lower()
        except UnicodeDecodeError:
            return _deny(DenyReason.BAD_CREDENTIALS, "password is not hex")
        if not hmac.compare_digest(given, expected_password(_secret, client.client_id)):
            host.log(host.LogLevel.WARN, "wrong device password")
            return _deny(DenyReason.BAD_CREDENTIALS, "wrong password")
        return AuthOutcome_Allow()
