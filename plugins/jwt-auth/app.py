"""jwt-auth: MQTT clients log in with a JWT as their password; its claims are their ACL.

The broker-facing layer (WIT world `access-control` of mqtt-broker:plugin@0.2.0): `init`
validates the config, `authenticate` verifies the token and stores the client's topic rules
in the plugin's key-value store under its client id, `authorize` answers from them. The logic
itself is in jwtcore.py (unit-tested natively by test_jwtcore.py). See README.md.

The broker runs several instances of a plugin and any of them may answer a call, so nothing
learnt in `authenticate` may be kept in a global: the `kv` capability is shared by all of
them, and this plugin needs it (`capabilities: {kv: {...}}` in its config entry).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, kv
from wit_world.imports.types import (
    AclAction,
    AclRequest,
    AuthOutcome_Allow,
    AuthOutcome_Deny,
    Client,
    Credentials,
    Decision,
    Denial,
    DenyReason,
)

import jwtcore

# Set by init(); None until then, so a missing init never means "no key".
_settings = None

_ACTIONS = {
    AclAction.PUBLISH: "publish",
    AclAction.SUBSCRIBE: "subscribe",
    AclAction.DELIVER: "deliver",
}


def _warm_up():
    """Runs every code path once while componentize-py pre-initializes the module at build
    time: hashlib and json load parts of themselves lazily, and with `--stub-wasi` the
    component has no filesystem to import from at run time."""
    secret = b"warm-up-secret-of-at-least-32-bytes!"
    header = jwtcore.b64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwtcore.b64url_encode(b'{"sub":"u","exp":4102444800,"publish":["a/%u/#"]}')
    signing_input = f"{header}.{payload}".encode("ascii")
    token = f"{header}.{payload}." + jwtcore.b64url_encode(jwtcore.hs256_sign(secret, signing_input))
    settings = jwtcore.Settings([("hs256_secret", secret.decode())])
    claims = jwtcore.verify_token(settings, token, 0)
    rules = jwtcore.decode_rules(
        jwtcore.encode_rules(jwtcore.claim_filters(claims, "publish", "c", "u"), [])
    )
    jwtcore.decide(rules, "publish", "a/u/b")
    jwtcore.decide(rules, "subscribe", "a/+")
    jwtcore.emsa_pkcs1_v1_5(b"x", 256)
    jwtcore.rs256_verify(2**2047 + 1, 65537, b"x", b"\x01" * 256)


_warm_up()


def _deny(credentials: bool, message: str) -> AuthOutcome_Deny:
    reason = DenyReason.BAD_CREDENTIALS if credentials else DenyReason.NOT_AUTHORIZED
    return AuthOutcome_Deny(Denial(reason, message))


class Lifecycle(exports.Lifecycle):
    def init(self, config):
        global _settings
        try:
            _settings = jwtcore.Settings(config)
        except jwtcore.ConfigError as e:
            raise Err(str(e))
        host.log(host.LogLevel.INFO, f"jwt-auth ready (algorithms: {', '.join(_settings.algorithms())})")


class Authenticate(exports.Authenticate):
    def authenticate(self, client: Client, credentials: Credentials):
        if _settings is None:
            return _deny(False, "plugin not initialised")
        if credentials.password is None:
            return _deny(True, "no password (a JWT is expected)")
        try:
            token = bytes(credentials.password).decode("ascii")
        except UnicodeDecodeError:
            return _deny(True, "password is not a JWT (not ASCII)")
        client_id = client.client_id()
        try:
            claims = jwtcore.verify_token(_settings, token, host.now_millis())
            username = jwtcore.token_username(_settings, claims, credentials.username)
            publish = jwtcore.claim_filters(claims, "publish", client_id, username)
            subscribe = jwtcore.claim_filters(claims, "subscribe", client_id, username)
        except jwtcore.TokenError as e:
            return _deny(e.credentials, str(e))
        try:
            # Overwrites what an earlier connection with this client id left: a successful
            # CONNECT takes the client id over.
            kv.set(jwtcore.rules_key(client_id), jwtcore.encode_rules(publish, subscribe))
        except Err as e:
            return _deny(False, f"cannot store the token's ACL claims: {e.value}")
        return AuthOutcome_Allow()


class Authorize(exports.Authorize):
    def authorize(self, client: Client, request: AclRequest):
        try:
            stored = kv.get(jwtcore.rules_key(client.client_id()))
        except Err as e:
            host.log(host.LogLevel.WARN, f"cannot read ACL claims: {e.value}")
            return Decision.DENY
        if stored is None:
            return Decision.DENY  # not authenticated by this plugin: no claims, no access
        try:
            rules = jwtcore.decode_rules(bytes(stored))
        except (ValueError, KeyError):
            host.log(host.LogLevel.WARN, "stored ACL claims are unreadable")
            return Decision.DENY
        allowed = jwtcore.decide(rules, _ACTIONS.get(request.action, ""), request.topic)
        return Decision.ALLOW if allowed else Decision.DENY
