"""Native unit tests of jwt-auth's logic (jwtcore.py): signatures, claims, topic matching.

    cd plugins/jwt-auth && python3 -m unittest -v

Standard library only. The RSA test key is tests/fixtures/jwt-rs256-private.pem (a 2048-bit
test key made with openssl); two fixed tokens below were signed by `openssl dgst`, so the
verification is checked against an independent implementation, not only against our own
signer (tests/fixtures/jwt_rs256_sign.py).
"""

import json
import os
import sys
import unittest

import jwtcore
from jwtcore import ConfigError, Settings, TokenError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")
sys.path.insert(0, FIXTURES)
import jwt_rs256_sign  # noqa: E402  (tests/fixtures, found through the line above)

with open(os.path.join(FIXTURES, "jwt-rs256-public.pem")) as _f:
    PUBLIC_PEM = _f.read()
with open(os.path.join(FIXTURES, "jwt-rs256-private.pem")) as _f:
    PRIVATE_PEM = _f.read()

SECRET = "unit-test-secret-0123456789abcdef-xyz"
NOW_MS = 1_800_000_000_000  # a fixed "now" (2027-01-15)
NOW = NOW_MS // 1000

# Signed by `openssl dgst -sha256 -sign jwt-rs256-private.pem`: header {"alg":"RS256",
# "typ":"JWT"}, payload {"sub":"dev-7","iss":"test-issuer","aud":"mqtt","exp":4102444800,
# "publish":["devices/%u/#"],"subscribe":["commands/%c/#"]}.
OPENSSL_RS256_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJkZXYtNyIsImlzcyI6InRlc3QtaXNzdWVyIiwiYXVkIjoibXF0dCIsImV4cCI6NDEwMjQ0NDgwMCwi"
    "cHVibGlzaCI6WyJkZXZpY2VzLyV1LyMiXSwic3Vic2NyaWJlIjpbImNvbW1hbmRzLyVjLyMiXX0."
    "iVfus1xYfQXf6nAnwBafkqXmovimhajv1mFDvmDNDmj0qJB86hwjDENSRJtZP0sEhBsH6jUiMpQcw6Q53WcCPEgA"
    "xqsSjb6_36aGktgoN__4eEe_JUmbzNKpbjyzjXQ0QELUH4Zzly1JYP3j6zUKtIXhVVklUYqEKVHmNimwpqPdpmkV"
    "ovO57bd_KOSVyzfY2QBAerkyNE89DyKDm7yz4IPDaG_GL1cxYCHMsCSPifTQ2YvaHx3HvQPSFD36xvtbk2pQg4lP"
    "ZTUb3jKPjB8fUk3e6_xpARXFu7egyxU4RWYImtzSNH-InOngIaCS9G5Z5b9Ab2tU3txPDOGr8mfGog"
)
# Signed by `openssl dgst -sha256 -mac HMAC -macopt key:$SECRET`: {"sub":"dev-7","exp":4102444800}.
OPENSSL_HS256_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZXYtNyIsImV4cCI6NDEwMjQ0NDgwMH0."
    "3s8sfKMprzZSMbYcnSZ0UoJ2A-d3pm_p_y7Asjx0FJc"
)


def b64(obj) -> str:
    return jwtcore.b64url_encode(json.dumps(obj).encode("utf-8"))


def make_token(claims, alg="HS256", secret=SECRET, header=None) -> str:
    head = b64(header if header is not None else {"alg": alg, "typ": "JWT"})
    signing_input = f"{head}.{b64(claims)}"
    if alg == "HS256":
        sig = jwtcore.hs256_sign(secret.encode("utf-8"), signing_input.encode("ascii"))
    elif alg == "RS256":
        sig = jwt_rs256_sign.sign(PRIVATE_PEM, signing_input.encode("ascii"))
    else:
        sig = b""
    return f"{signing_input}.{jwtcore.b64url_encode(sig)}"


def settings(**extra) -> Settings:
    config = {"hs256_secret": SECRET, "rs256_public_key": PUBLIC_PEM}
    config.update(extra)
    return Settings([(k, v) for k, v in config.items() if v is not None])


def claims(**extra):
    c = {"sub": "dev-7", "exp": NOW + 600}
    c.update(extra)
    return c


class KeyParsing(unittest.TestCase):
    def test_spki_and_pkcs1_pem_give_the_same_key(self):
        n, e = jwtcore.parse_rsa_public_key(PUBLIC_PEM)
        self.assertEqual(n.bit_length(), 2048)
        self.assertEqual(e, 65537)
        # The private key's modulus is the public key's.
        self.assertEqual(jwt_rs256_sign.private_key(PRIVATE_PEM)[0], n)
        # The same key as a PKCS#1 `RSA PUBLIC KEY`: the BIT STRING's contents.
        der = jwtcore.base64.b64decode("".join(PUBLIC_PEM.split("-----")[2].split()))
        pkcs1 = der[24:]  # 30 82 01 22 | 30 0d (rsaEncryption, NULL) | 03 82 01 0f 00
        pem = "-----BEGIN RSA PUBLIC KEY-----\n" + jwtcore.base64.b64encode(pkcs1).decode() + "\n-----END RSA PUBLIC KEY-----\n"
        self.assertEqual(jwtcore.parse_rsa_public_key(pem), (n, e))

    def test_bad_keys_are_config_errors(self):
        for pem in [
            "",
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----",
            PUBLIC_PEM.replace("MIIBIjAN", "MIIBIjAA"),  # not an RSA AlgorithmIdentifier
            # A 1024-bit key (too small).
            "-----BEGIN PUBLIC KEY-----\n"
            "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC7VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dV"
            "MvDuictGeurT8jNbvJZHtCSuYEvuNMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCF"
            "GeJZqgtzJ6GR3eqoYSW9b9UMvkBpZODSctWSNGj3P7jRFDO5VoTwCQAWbFnOjDfH5Ulgp2PKSQnSJP3AJLQNFNe7"
            "br1XbrhV//eO+t51mIpGSDCUv3E0DDFcWDTH9cXDTTlRZVEiR2BwpZOOkE/Z0/BVnhZYL71oZV34bKfWjQIt6V/i"
            "sSMahdsAASACp4ZTGtwiVuNd9tybAgMBAAE=\n-----END PUBLIC KEY-----",
        ]:
            with self.subTest(pem=pem[:40]):
                with self.assertRaises(ConfigError):
                    jwtcore.parse_rsa_public_key(pem if pem else "no pem here")

    def test_config_needs_a_long_enough_key(self):
        with self.assertRaises(ConfigError):
            Settings([])
        with self.assertRaisesRegex(ConfigError, "32 bytes"):
            Settings([("hs256_secret", "short")])
        with self.assertRaisesRegex(ConfigError, "unknown config key"):
            Settings([("hs256_secret", SECRET), ("isuer", "x")])
        with self.assertRaisesRegex(ConfigError, "leeway"):
            settings(leeway="soon")
        self.assertEqual(Settings([("hs256_secret", SECRET)]).algorithms(), ["HS256"])
        self.assertEqual(Settings([("rs256_public_key", PUBLIC_PEM)]).algorithms(), ["RS256"])


class Signatures(unittest.TestCase):
    def test_tokens_signed_by_openssl_verify(self):
        c = jwtcore.verify_token(settings(issuer="test-issuer", audience="mqtt"), OPENSSL_RS256_TOKEN, NOW_MS)
        self.assertEqual(c["sub"], "dev-7")
        c = jwtcore.verify_token(settings(), OPENSSL_HS256_TOKEN, NOW_MS)
        self.assertEqual(c["exp"], 4102444800)

    def test_own_signatures_verify(self):
        for alg in ("HS256", "RS256"):
            with self.subTest(alg=alg):
                token = make_token(claims(), alg)
                self.assertEqual(jwtcore.verify_token(settings(), token, NOW_MS)["sub"], "dev-7")

    def test_emsa_encoding_is_exact(self):
        em = jwtcore.emsa_pkcs1_v1_5(b"abc", 256)
        self.assertEqual(len(em), 256)
        self.assertEqual(em[:2], b"\x00\x01")
        # 256 - 3 - 19 (DigestInfo prefix) - 32 (digest) = 202 bytes of 0xff.
        self.assertEqual(em[2:204], b"\xff" * 202)
        self.assertEqual(em[204], 0)
        self.assertEqual(em[205:224].hex(), "3031300d060960864801650304020105000420")
        self.assertEqual(em[224:], jwtcore.hashlib.sha256(b"abc").digest())

    def test_tampered_tokens_are_refused(self):
        for alg in ("HS256", "RS256"):
            token = make_token(claims(), alg)
            head, payload, sig = token.split(".")
            forged_payload = b64(claims(sub="admin"))
            flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
            for bad in [
                f"{head}.{forged_payload}.{sig}",
                f"{head}.{payload}.{flipped}",
                f"{head}.{payload}.",
                f"{head}.{payload}.{sig}A",  # one character too many: not base64url
                f"{head}.{payload}.{sig}=",  # padding is not allowed in a JWS
                f"{head}.{payload}",
            ]:
                with self.subTest(alg=alg, bad=bad[-20:]):
                    with self.assertRaises(TokenError) as err:
                        jwtcore.verify_token(settings(), bad, NOW_MS)
                    self.assertTrue(err.exception.credentials)

    def test_wrong_hmac_secret(self):
        token = make_token(claims(), secret="another-secret-that-is-long-enough-too")
        with self.assertRaisesRegex(TokenError, "bad HS256 signature"):
            jwtcore.verify_token(settings(), token, NOW_MS)

    def test_rsa_signature_of_the_wrong_length_or_out_of_range(self):
        n, e = jwtcore.parse_rsa_public_key(PUBLIC_PEM)
        self.assertFalse(jwtcore.rs256_verify(n, e, b"x", b"\x00" * 255))
        self.assertFalse(jwtcore.rs256_verify(n, e, b"x", n.to_bytes(256, "big")))
        # A valid signature with a leading zero byte dropped is refused (length must be k).
        good = jwt_rs256_sign.sign(PRIVATE_PEM, b"x")
        self.assertTrue(jwtcore.rs256_verify(n, e, b"x", good))
        self.assertFalse(jwtcore.rs256_verify(n, e, b"x", good + b"\x00"))

    def test_alg_none_is_refused(self):
        for alg in ("none", "None", "NONE"):
            token = make_token(claims(), alg=alg, header={"alg": alg})
            with self.subTest(alg=alg), self.assertRaisesRegex(TokenError, "alg none"):
                jwtcore.verify_token(settings(), token, NOW_MS)

    def test_alg_confusion_is_refused(self):
        # HS256 "signed" with the RSA public key as the HMAC secret: the classic confusion.
        # With only RS256 configured the alg itself is refused...
        confused = make_token(claims(), "HS256", secret=PUBLIC_PEM)
        rsa_only = settings(hs256_secret=None)
        with self.assertRaisesRegex(TokenError, "alg HS256 is not configured"):
            jwtcore.verify_token(rsa_only, confused, NOW_MS)
        # ...and with both configured the HMAC key is the HS256 secret, never the PEM.
        with self.assertRaisesRegex(TokenError, "bad HS256 signature"):
            jwtcore.verify_token(settings(), confused, NOW_MS)
        # An RS256 token when only HS256 is configured.
        with self.assertRaisesRegex(TokenError, "alg RS256 is not configured"):
            jwtcore.verify_token(settings(rs256_public_key=None), make_token(claims(), "RS256"), NOW_MS)
        for header in [{"alg": "HS512"}, {"typ": "JWT"}, {"alg": ["HS256"]}]:
            with self.subTest(header=header), self.assertRaises(TokenError):
                jwtcore.verify_token(settings(), make_token(claims(), header=header), NOW_MS)

    def test_crit_header_is_refused(self):
        token = make_token(claims(), header={"alg": "HS256", "crit": ["exp"]})
        with self.assertRaisesRegex(TokenError, "crit"):
            jwtcore.verify_token(settings(), token, NOW_MS)

    def test_garbage(self):
        for bad in ["", "a.b", "a.b.c.d", "%%%.e30.", "e30.e30.", "W10.e30."]:
            with self.subTest(bad=bad), self.assertRaises(TokenError):
                jwtcore.verify_token(settings(), bad, NOW_MS)


class Claims(unittest.TestCase):
    def check(self, c, s=None, now_ms=NOW_MS):
        return jwtcore.verify_token(s or settings(), make_token(c), now_ms)

    def test_expiry_with_leeway(self):
        self.check(claims(exp=NOW + 1))
        self.check(claims(exp=NOW - 29))  # within the default 30 s leeway
        with self.assertRaisesRegex(TokenError, "expired"):
            self.check(claims(exp=NOW - 30))
        with self.assertRaisesRegex(TokenError, "expired"):
            self.check(claims(exp=NOW - 5), settings(leeway="0"))
        with self.assertRaisesRegex(TokenError, "not a number"):
            self.check(claims(exp="tomorrow"))
        with self.assertRaisesRegex(TokenError, "not a number"):
            self.check(claims(exp=True))

    def test_exp_required_by_default(self):
        c = claims()
        del c["exp"]
        with self.assertRaisesRegex(TokenError, "no `exp`"):
            self.check(c)
        self.assertEqual(self.check(c, settings(require_exp="false"))["sub"], "dev-7")

    def test_not_before(self):
        self.check(claims(nbf=NOW))
        self.check(claims(nbf=NOW + 20))  # leeway
        with self.assertRaisesRegex(TokenError, "nbf"):
            self.check(claims(nbf=NOW + 100))

    def test_issuer_and_audience(self):
        s = settings(issuer="https://issuer.example", audience="mqtt")
        self.check(claims(iss="https://issuer.example", aud="mqtt"), s)
        self.check(claims(iss="https://issuer.example", aud=["web", "mqtt"]), s)
        for bad in [
            claims(aud="mqtt"),
            claims(iss="https://evil.example", aud="mqtt"),
            claims(iss="https://issuer.example"),
            claims(iss="https://issuer.example", aud=["web"]),
        ]:
            with self.subTest(bad=bad), self.assertRaises(TokenError):
                self.check(bad, s)
        # Not configured: not checked.
        self.check(claims(iss="anyone", aud="anything"))

    def test_username_claim(self):
        s = settings()
        c = self.check(claims())
        self.assertEqual(jwtcore.token_username(s, c, "dev-7"), "dev-7")
        self.assertEqual(jwtcore.token_username(s, c, None), "dev-7")
        with self.assertRaisesRegex(TokenError, "another user") as err:
            jwtcore.token_username(s, c, "dev-8")
        self.assertFalse(err.exception.credentials)
        s = settings(username_claim="preferred_username")
        c = self.check(claims(preferred_username="alice"), s)
        self.assertEqual(jwtcore.token_username(s, c, "alice"), "alice")
        with self.assertRaises(TokenError):
            jwtcore.token_username(s, c, "dev-7")
        with self.assertRaisesRegex(TokenError, "no `preferred_username`"):
            jwtcore.token_username(s, {"sub": "alice"}, "alice")


class Filters(unittest.TestCase):
    def test_claim_filters_substitute(self):
        c = {"publish": ["devices/%u/#", "clients/%c/status", "shared/+"], "subscribe": "commands/%c/#"}
        self.assertEqual(
            jwtcore.claim_filters(c, "publish", "cid-1", "dev-7"),
            ["devices/dev-7/#", "clients/cid-1/status", "shared/+"],
        )
        self.assertEqual(jwtcore.claim_filters(c, "subscribe", "cid-1", "dev-7"), ["commands/cid-1/#"])
        self.assertEqual(jwtcore.claim_filters(c, "missing", "cid-1", "dev-7"), [])

    def test_values_that_would_widen_a_filter_grant_nothing(self):
        c = {"publish": ["devices/%u/#", "public/#"]}
        for user in ["+", "#", "a/b", ""]:
            with self.subTest(user=user):
                self.assertEqual(jwtcore.claim_filters(c, "publish", "cid", user), ["public/#"])

    def test_bad_claims(self):
        for bad in [{"publish": [1]}, {"publish": {"a": 1}}, {"publish": ["a/#/b"]}, {"publish": ["a+"]}, {"publish": [""]}]:
            with self.subTest(bad=bad), self.assertRaises(TokenError):
                jwtcore.claim_filters(bad, "publish", "c", "u")

    def test_topic_matching(self):
        yes = [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "a/b"),
            ("+/+", "a/b"),
            ("+", ""),
            ("a/+/c", "a//c"),
            ("$SYS/#", "$SYS/broker"),
        ]
        no = [
            ("a/b", "a/c"),
            ("a/+", "a/b/c"),
            ("a/+", "a"),
            ("a/b", "a/b/c"),
            ("#", "$SYS/broker"),
            ("+/broker", "$SYS/broker"),
            ("a/b/#", "a/c"),
        ]
        for f, t in yes:
            with self.subTest(f=f, t=t):
                self.assertTrue(jwtcore.topic_matches(f, t))
        for f, t in no:
            with self.subTest(f=f, t=t):
                self.assertFalse(jwtcore.topic_matches(f, t))

    def test_filter_coverage(self):
        yes = [
            ("a/#", "a/#"),
            ("a/#", "a/b/#"),
            ("a/#", "a/+"),
            ("a/#", "a"),
            ("#", "a/+/c/#"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("a/+/c", "a/b/c"),
            ("a/b", "a/b"),
            ("a/#", "$share/g1/a/b"),
        ]
        no = [
            ("a/+", "a/#"),  # a/# also matches a/b/c
            ("a/b", "a/+"),
            ("a/b", "a/#"),
            ("a/+", "a/b/c"),
            ("a/b/#", "a/#"),
            ("a/b/#", "a"),
            ("#", "$SYS/#"),
            ("+/#", "$SYS/x"),
            ("a/+/c", "a/+/d"),
            ("a/b", "$share/g1/a/#"),
        ]
        for g, r in yes:
            with self.subTest(granted=g, requested=r):
                self.assertTrue(jwtcore.filter_covers(g, r))
        for g, r in no:
            with self.subTest(granted=g, requested=r):
                self.assertFalse(jwtcore.filter_covers(g, r))

    def test_decide_from_stored_rules(self):
        rules = jwtcore.decode_rules(jwtcore.encode_rules(["devices/dev-7/#"], ["commands/dev-7/#", "broadcast"]))
        self.assertTrue(jwtcore.decide(rules, "publish", "devices/dev-7/temp"))
        self.assertFalse(jwtcore.decide(rules, "publish", "devices/dev-8/temp"))
        self.assertFalse(jwtcore.decide(rules, "publish", "commands/dev-7/x"))  # subscribe-only
        self.assertTrue(jwtcore.decide(rules, "deliver", "commands/dev-7/reboot"))
        self.assertTrue(jwtcore.decide(rules, "deliver", "broadcast"))
        self.assertFalse(jwtcore.decide(rules, "deliver", "devices/dev-7/temp"))  # publish-only
        self.assertTrue(jwtcore.decide(rules, "subscribe", "commands/dev-7/+"))
        self.assertFalse(jwtcore.decide(rules, "subscribe", "commands/#"))
        self.assertFalse(jwtcore.decide(rules, "other", "commands/dev-7/x"))
        self.assertFalse(jwtcore.decide(([], []), "publish", "anything"))
        self.assertEqual(jwtcore.rules_key("c1"), "claims/c1")


if __name__ == "__main__":
    unittest.main()
