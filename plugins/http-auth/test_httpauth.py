"""Native unit tests of http-auth's logic (httpauth.py): config, request, answer.

    cd plugins/http-auth && python3 -m unittest -v

Standard library only.
"""

import json
import unittest
import urllib.parse

import httpauth
from httpauth import ConfigError, Settings

URL = "http://127.0.0.1:8080/mqtt/auth"


def settings(**extra) -> Settings:
    config = {"url": URL}
    config.update(extra)
    return Settings(list(config.items()))


class Config(unittest.TestCase):
    def test_defaults(self):
        s = settings()
        self.assertEqual(s.method, "POST")
        self.assertIsNone(s.timeout_ms)
        self.assertEqual(s.on_failure, "deny")
        self.assertIn(("Content-Type", "application/json"), s.headers)

    def test_headers_and_options(self):
        s = settings(method="put", timeout_ms="250", headers='{"X-Api-Key": "k1", "content-type": "application/json; charset=utf-8"}', on_failure="IGNORE")
        self.assertEqual(s.method, "PUT")
        self.assertEqual(s.timeout_ms, 250)
        self.assertEqual(s.on_failure, "ignore")
        self.assertIn(("X-Api-Key", "k1"), s.headers)
        # The configured content type is kept, not doubled.
        self.assertEqual([k for k, _ in s.headers if k.lower() == "content-type"], ["content-type"])

    def test_bad_config(self):
        for bad in [
            {"url": ""},
            {"url": "ftp://host/x"},
            {"url": "127.0.0.1:8080/auth"},
            {"url": URL, "method": "DELETE"},
            {"url": URL, "timeout_ms": "soon"},
            {"url": URL, "timeout_ms": "0"},
            {"url": URL, "headers": "[1, 2]"},
            {"url": URL, "headers": '{"a": {"b": 1}}'},
            {"url": URL, "headers": "not json"},
            {"url": URL, "on_failure": "allow"},
            {"url": URL, "urls": URL},
        ]:
            with self.subTest(bad=bad), self.assertRaises(ConfigError):
                Settings(list(bad.items()))


class Request(unittest.TestCase):
    def test_utf8_password_as_text(self):
        p = httpauth.request_params("c1", "alice", b"s3cr\xc3\xa9t", "127.0.0.1:50000", "mqtt311")
        self.assertEqual(
            p,
            {
                "clientid": "c1",
                "username": "alice",
                "password": "s3cr\u00e9t",
                "password_encoding": "utf8",
                "peerhost": "127.0.0.1",
                "protocol": "mqtt311",
            },
        )

    def test_binary_password_as_base64(self):
        p = httpauth.request_params("c1", None, b"\xff\x00\xfe", "[::1]:1883", "mqtt5")
        self.assertEqual(p["password"], "/wD+")
        self.assertEqual(p["password_encoding"], "base64")
        self.assertEqual(p["peerhost"], "::1")
        self.assertIsNone(p["username"])

    def test_no_password(self):
        p = httpauth.request_params("c1", "u", None, "10.0.0.1:1", "mqtt31")
        self.assertIsNone(p["password"])
        self.assertIsNone(p["password_encoding"])

    def test_post_sends_json(self):
        params = httpauth.request_params("c1", "alice", b"pw", "127.0.0.1:1", "mqtt5")
        method, url, headers, body = httpauth.build_request(settings(), params)
        self.assertEqual((method, url), ("POST", URL))
        self.assertEqual(json.loads(body), params)
        self.assertIn(("Content-Type", "application/json"), headers)

    def test_get_sends_a_query_string(self):
        params = httpauth.request_params("c 1", None, b"p&w", "127.0.0.1:1", "mqtt5")
        method, url, _, body = httpauth.build_request(settings(method="GET"), params)
        self.assertEqual((method, body), ("GET", b""))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True)
        self.assertEqual(query["clientid"], ["c 1"])
        self.assertEqual(query["password"], ["p&w"])
        self.assertEqual(query["username"], [""])
        _, url, _, _ = httpauth.build_request(settings(method="GET", url=URL + "?tenant=a"), params)
        self.assertTrue(url.startswith(URL + "?tenant=a&clientid="), url)


class Answer(unittest.TestCase):
    def test_results(self):
        self.assertEqual(httpauth.read_answer(200, b'{"result": "allow"}')[0], "allow")
        self.assertEqual(httpauth.read_answer(200, b'{"result": "ignore", "is_superuser": false}')[0], "ignore")
        verdict, message = httpauth.read_answer(200, b'{"result": "deny", "reason": "account locked"}')
        self.assertEqual(verdict, "deny")
        self.assertIn("account locked", message)

    def test_failures(self):
        for status, body, expect in [
            (500, b'{"result": "allow"}', "HTTP 500"),
            (204, b"", "HTTP 204"),
            (403, b'{"result": "deny"}', "HTTP 403"),
            (200, b"allow", "without a JSON body"),
            (200, b"\xff", "without a JSON body"),
            (200, b'["allow"]', '"result"'),
            (200, b'{"result": "ALLOWED"}', '"result"'),
            (200, b"{}", '"result"'),
        ]:
            with self.subTest(status=status, body=body):
                verdict, message = httpauth.read_answer(status, body)
                self.assertEqual(verdict, "failed")
                self.assertIn(expect, message)


if __name__ == "__main__":
    unittest.main()
