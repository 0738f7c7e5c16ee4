"""http-auth: asks an HTTP service whether a client may connect (like EMQX's HTTP
authentication).

The broker-facing layer (WIT world `authenticator` of mqtt-broker:plugin@0.2.0): `init`
validates the config, `authenticate` sends the client's credentials to the configured URL
with the `http` capability and turns the answer into allow / deny / abstain. The logic itself
is in httpauth.py (unit-tested natively by test_httpauth.py). See README.md.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, http
from wit_world.imports.types import (
    AuthOutcome_Abstain,
    AuthOutcome_Allow,
    AuthOutcome_Deny,
    Client,
    Credentials,
    Denial,
    DenyReason,
    ProtocolLevel,
)

import httpauth

# Set by init(); None until then.
_settings = None

_PROTOCOLS = {
    ProtocolLevel.MQTT31: "mqtt31",
    ProtocolLevel.MQTT311: "mqtt311",
    ProtocolLevel.MQTT5: "mqtt5",
}


def _warm_up():
    """Runs every code path once while componentize-py pre-initializes the module at build
    time: json and base64 load parts of themselves lazily, and with `--stub-wasi` the
    component has no filesystem to import from at run time."""
    for method in httpauth.METHODS:
        s = httpauth.Settings([("url", "http://127.0.0.1:1/auth?x=1"), ("method", method), ("headers", '{"a": "b"}')])
        params = httpauth.request_params("c", "u", b"\xff", "[::1]:1", "mqtt5")
        httpauth.build_request(s, params)
        httpauth.request_params("c", None, b"p", "1.2.3.4:5", "mqtt311")
    httpauth.read_answer(200, b'{"result": "deny", "reason": "r"}')
    httpauth.read_answer(200, b"\xff")
    httpauth.read_answer(200, b"[]")


_warm_up()


def _deny(reason: DenyReason, message: str) -> AuthOutcome_Deny:
    return AuthOutcome_Deny(Denial(reason, message))


class Lifecycle(exports.Lifecycle):
    def init(self, config):
        global _settings
        try:
            _settings = httpauth.Settings(config)
        except httpauth.ConfigError as e:
            raise Err(str(e))
        host.log(host.LogLevel.INFO, f"http-auth ready ({_settings.method} {_settings.url})")


class Authenticate(exports.Authenticate):
    def authenticate(self, client: Client, credentials: Credentials):
        s = _settings
        if s is None:
            return _deny(DenyReason.NOT_AUTHORIZED, "plugin not initialised")
        params = httpauth.request_params(
            client.client_id(),
            credentials.username,
            credentials.password,
            client.peer_address(),
            _PROTOCOLS.get(client.protocol_level(), "unknown"),
        )
        method, url, headers, body = httpauth.build_request(s, params)
        try:
            response = http.fetch(http.Request(method, url, headers, body, s.timeout_ms))
            verdict, message = httpauth.read_answer(response.status, response.body)
        except Err as e:
            verdict, message = httpauth.FAILED, f"authentication service not reached: {e.value}"
        if verdict == httpauth.ALLOW:
            return AuthOutcome_Allow()
        if verdict == httpauth.DENY:
            return _deny(DenyReason.BAD_CREDENTIALS, message)
        if verdict == httpauth.IGNORE:
            return AuthOutcome_Abstain()
        # No usable answer.
        if s.on_failure == httpauth.IGNORE:
            host.log(host.LogLevel.WARN, f"{message}; abstaining (on_failure: ignore)")
            return AuthOutcome_Abstain()
        return _deny(DenyReason.NOT_AUTHORIZED, message)
