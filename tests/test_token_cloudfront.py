"""CloudFront signed URLs and signed cookies (``edge/auth/cloudfront.py``).

Tokens are minted by botocore's ``CloudFrontSigner`` (canned: ``date_less_than``; custom:
``build_policy`` with a wildcard resource, ``date_greater_than``, ``ip_address``) with RSA keys
generated here; signed cookies are built from the same policy and signature, as CloudFront's
documentation describes them. The hypothesis properties total 10,500 generated cases; valid
tokens always grant, every tampered one never does.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reelcdn.edge.auth import cloudfront
from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


RING = KeyRing({"K1": _pem(KEY), "K2": _pem(OTHER_KEY)}, current="K1")
NOW = 1_700_000_000
EXPIRES = NOW + 3600
STARTS = NOW - 100
CLIENT = "192.0.2.7"
NETWORK = "192.0.2.0/24"
HOST = "cdn.example.com"
VIDEO = f"https://{HOST}/v/abc/"
CF_NAMES = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")


def at(moment: int) -> datetime:
    return datetime.fromtimestamp(moment, tz=UTC)


def signer(kid: str = "K1", key: rsa.RSAPrivateKey = KEY,
           algorithm: hashes.HashAlgorithm | None = None) -> CloudFrontSigner:
    return CloudFrontSigner(
        kid, lambda message: key.sign(message, padding.PKCS1v15(), algorithm or hashes.SHA1()))


SIGNER = signer()


def b64(data: bytes) -> str:
    return SIGNER._url_b64encode(data).decode("ascii")


def custom_policy(resource: str | None = VIDEO + "*", *, until: int = EXPIRES,
                  starts: int | None = None, ip: str | None = None) -> str:
    policy = SIGNER.build_policy(resource, at(until), date_greater_than=starts and at(starts),
                                 ip_address=ip)
    if resource is None:  # build_policy always writes a Resource; CloudFront's is optional
        document = json.loads(policy)
        del document["Statement"][0]["Resource"]
        policy = json.dumps(document, separators=(",", ":"))
    return policy


def request(url: str, *, now: float = NOW, client_ip: str = CLIENT,
            cookies: dict[str, str] | None = None) -> TokenRequest:
    """The request a viewer makes for ``url``: its path and raw query, its host."""
    parts = urlsplit(url)
    return TokenRequest(path=parts.path, query=parts.query, cookies=cookies or {},
                        headers={"host": parts.netloc}, client_ip=client_ip, now=now)


def verify(req: TokenRequest, ring: KeyRing = RING, **options) -> Grant | Refusal:
    return cloudfront.verify(req, ring, **options)


def signed_cookies(url: str, *, expires: int | None = EXPIRES, policy: str | None = None,
                   kid: str = "K1", key: rsa.RSAPrivateKey = KEY) -> dict[str, str]:
    """CloudFront's three cookies for ``url``: canned (``CloudFront-Expires``, the signature of
    the canned policy of ``url``) or custom (``CloudFront-Policy``)."""
    sign = signer(kid, key).rsa_signer
    if policy is None:
        canned = SIGNER.build_policy(url, at(expires)).encode()
        return {"CloudFront-Expires": str(expires), "CloudFront-Signature": b64(sign(canned)),
                "CloudFront-Key-Pair-Id": kid}
    return {"CloudFront-Policy": b64(policy.encode()),
            "CloudFront-Signature": b64(sign(policy.encode())), "CloudFront-Key-Pair-Id": kid}


# --- valid tokens ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    f"https://{HOST}/v/abc/master.m3u8",
    f"https://{HOST}/v/abc/720p/index.m3u8?CMCD=bl%3D2000&x=",
    f"https://{HOST}/v/abc/seg%20one.ts?a=1&b=2&a=3",
    f"https://{HOST}:8443/v/abc/init.mp4?q=a=b&&z",
    "https://d111111abcdef8.cloudfront.net/image.jpg?color=red&size=medium",
])
def test_canned_url_from_botocore_grants(url: str) -> None:
    signed = SIGNER.generate_presigned_url(url, date_less_than=at(EXPIRES))
    assert verify(request(signed)) == Grant(expires=EXPIRES, carried=())


def test_canned_policy_is_botocores() -> None:
    url = f"https://{HOST}/v/abc/seg.ts?a=1&b=%22x%22"
    assert cloudfront.canned_policy(url, EXPIRES) == SIGNER.build_policy(
        url, at(EXPIRES)).encode()


def test_custom_wildcard_url_grants_and_carries_its_parameters() -> None:
    policy = custom_policy(starts=STARTS, ip=NETWORK)
    signed = SIGNER.generate_presigned_url(VIDEO + "720p/index.m3u8?x=1", policy=policy)
    verdict = verify(request(signed))
    assert isinstance(verdict, Grant) and verdict.expires == EXPIRES
    assert [name for name, _ in verdict.carried] == ["Policy", "Signature", "Key-Pair-Id"]
    carried = dict(verdict.carried)
    assert carried["Policy"] == b64(policy.encode()) and carried["Key-Pair-Id"] == "K1"
    # A playlist copies them to every URI of the video: a segment with them grants too.
    segment = VIDEO + "720p/seg-00001.m4s?" + "&".join(f"{n}={v}" for n, v in verdict.carried)
    assert verify(request(segment)) == verdict


def test_canned_cannot_cover_another_uri_of_the_video() -> None:
    signed = SIGNER.generate_presigned_url(VIDEO + "master.m3u8", date_less_than=at(EXPIRES))
    query = urlsplit(signed).query
    assert verify(request(VIDEO + "720p/index.m3u8?" + query)) == Refusal("bad-signature")


def test_custom_exact_resource_with_own_query() -> None:
    url = VIDEO + "master.m3u8?lang=en&hd=1"
    signed = SIGNER.generate_presigned_url(url, policy=custom_policy(url))
    assert isinstance(verify(request(signed)), Grant)
    assert verify(request(signed.replace("lang=en&hd=1", "hd=1&lang=en"))) == Refusal("acl")


def test_cloudfront_parameters_anywhere_in_the_query() -> None:
    """CloudFront's docs: own parameters go before ``Expires``/``Policy``, "in certain rare
    circumstances" after ``Key-Pair-Id``; what is signed is the query without them."""
    signed = SIGNER.generate_presigned_url(VIDEO + "a.ts?x=1&y=2", date_less_than=at(EXPIRES))
    base, query = signed.split("?")
    pieces = query.split("&")
    moved = [pieces[2], pieces[0], pieces[3], pieces[1], pieces[4]]  # E, x, S, y, K
    assert verify(request(base + "?" + "&".join(moved))) == Grant(expires=EXPIRES)


def test_resource_wildcards() -> None:
    match = cloudfront.resource_matches
    assert match("https://h/v/abc/*", "https://h/v/abc/")
    assert match("https://h/v/abc/*", "https://h/v/abc/720p/seg.ts?x=1")
    assert not match("https://h/v/abc/*", "https://h/v/abcd/seg.ts")
    assert match("http*://h/*game_download.zip*", "https://h/example_game_download.zip?l=y")
    assert match("https://h/v/ab?/x", "https://h/v/abc/x")
    assert not match("https://h/v/ab?/x", "https://h/v/ab/x")
    assert not match("https://h/v/ab?/x", "https://h/v/abcd/x")
    assert match("*", "https://anything/at?all")
    assert not match("https://h/a.ts", "https://h/aXts")  # "." is literal
    assert not match("https://h/v/abc/*", "HTTPS://h/v/abc/x")


def test_custom_date_greater_than_and_ip_grant_inside() -> None:
    policy = custom_policy(starts=STARTS, ip=NETWORK)
    signed = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=policy)
    assert isinstance(verify(request(signed, now=STARTS + 1, client_ip="192.0.2.255")), Grant)
    # a dual-stack listener reports an IPv4 client as an IPv4-mapped address
    assert isinstance(verify(request(signed, client_ip="::ffff:192.0.2.9")), Grant)


def test_ipv6_source_ip() -> None:
    """CloudFront documents IPv4 ranges only; an IPv6 range verifies here as one would expect."""
    policy = custom_policy(ip="2001:db8::/32")
    signed = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=policy)
    assert isinstance(verify(request(signed, client_ip="2001:db8::7")), Grant)
    assert verify(request(signed, client_ip="2001:db9::7")) == Refusal("ip")
    assert verify(request(signed, client_ip=CLIENT)) == Refusal("ip")


def test_policy_without_resource_grants_everything_its_key_signs() -> None:
    signed = SIGNER.generate_presigned_url("https://other.example/x?y=1",
                                           policy=custom_policy(None))
    assert isinstance(verify(request(signed)), Grant)


def test_scheme_is_part_of_the_url() -> None:
    url = f"http://{HOST}/v/abc/x.ts"
    signed = SIGNER.generate_presigned_url(url, date_less_than=at(EXPIRES))
    assert isinstance(verify(request(signed), scheme="http"), Grant)
    assert verify(request(signed)) == Refusal("bad-signature")  # the listener is https


def test_sha256_hash_algorithm() -> None:
    """``Hash-Algorithm=SHA256`` (CloudFront's newer option; botocore signs SHA-1 only)."""
    sha256 = signer(algorithm=hashes.SHA256())
    signed = sha256.generate_presigned_url(VIDEO + "x.ts", date_less_than=at(EXPIRES))
    assert verify(request(signed)) == Refusal("bad-signature")
    assert verify(request(signed + "&Hash-Algorithm=SHA256")) == Grant(expires=EXPIRES)
    assert verify(request(signed + "&Hash-Algorithm=MD5")) == Refusal("malformed")
    policy = custom_policy()
    signed = sha256.generate_presigned_url(VIDEO + "x.ts", policy=policy)
    verdict = verify(request(signed + "&Hash-Algorithm=SHA256"))
    assert isinstance(verdict, Grant)
    assert verdict.carried[-1] == ("Hash-Algorithm", "SHA256")


def test_signed_cookies_canned_and_custom() -> None:
    url = VIDEO + "720p/seg.ts?x=1"
    assert verify(request(url, cookies=signed_cookies(url))) == Grant(expires=EXPIRES)
    policy = custom_policy(starts=STARTS, ip=NETWORK)
    assert verify(request(url, cookies=signed_cookies(url, policy=policy))) == Grant(
        expires=EXPIRES, carried=())
    other = VIDEO + "720p/seg2.ts?x=1"
    assert verify(request(other, cookies=signed_cookies(url))) == Refusal("bad-signature")


def test_signed_url_takes_precedence_over_cookies() -> None:
    url = VIDEO + "x.ts"
    good_cookies = signed_cookies(url)
    assert verify(request(url + "?Expires=1&Signature=AAAA&Key-Pair-Id=K1",
                          cookies=good_cookies)) == Refusal("bad-signature")
    assert verify(request(url + "?Signature=AAAA", cookies=good_cookies)) == Refusal("malformed")
    # the gate may look at cookies only, or cookies first
    bad_url = url + "?Expires=1&Signature=AAAA&Key-Pair-Id=K1"
    # (parameters named as CloudFront's are never part of the URL a policy is about)
    assert verify(request(bad_url, cookies=good_cookies), sources=("cookie",)) == Grant(
        expires=EXPIRES)
    assert isinstance(verify(request(url, cookies=good_cookies), sources=("cookie", "query")),
                      Grant)
    assert verify(request(SIGNER.generate_presigned_url(url, date_less_than=at(EXPIRES))),
                  sources=("cookie",)) == Refusal("missing")
    with pytest.raises(ValueError):
        verify(request(url), sources=("header",))


def test_clock_skew() -> None:
    signed = SIGNER.generate_presigned_url(VIDEO + "x.ts",
                                           policy=custom_policy(starts=STARTS))
    assert verify(request(signed, now=EXPIRES)) == Refusal("expired")
    assert isinstance(verify(request(signed, now=EXPIRES + 29), clock_skew=30), Grant)
    assert verify(request(signed, now=EXPIRES + 30), clock_skew=30) == Refusal("expired")
    assert verify(request(signed, now=STARTS)) == Refusal("not-yet-valid")
    assert isinstance(verify(request(signed, now=STARTS - 29), clock_skew=30), Grant)
    assert verify(request(signed, now=STARTS - 30), clock_skew=30) == Refusal("not-yet-valid")


def test_public_keys_are_cached_per_pem() -> None:
    pem = _pem(KEY)
    assert cloudfront._public_key(pem) is cloudfront._public_key(bytes(pem))
    with pytest.raises(ValueError):
        cloudfront.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# --- each refusal reason --------------------------------------------------------------------

def _canned(url: str = VIDEO + "x.ts?a=1") -> str:
    return SIGNER.generate_presigned_url(url, date_less_than=at(EXPIRES))


def _signed_policy_url(policy: str, url: str = VIDEO + "x.ts") -> str:
    """A URL carrying ``policy`` (any text) correctly signed by K1."""
    sig = b64(SIGNER.rsa_signer(policy.encode()))
    return f"{url}?Policy={b64(policy.encode())}&Signature={sig}&Key-Pair-Id=K1"


@pytest.mark.parametrize("query", [
    "", "a=1", "signature=x&key-pair-id=K1&expires=5", "EXPIRES=1&SIGNATURE=x&KEY-PAIR-ID=K1",
])
def test_missing(query: str) -> None:
    assert verify(request(VIDEO + "x.ts?" + query)) == Refusal("missing")


def test_missing_cookies_named_otherwise() -> None:
    url = VIDEO + "x.ts"
    cookies = {name.lower(): value for name, value in signed_cookies(url).items()}
    assert verify(request(url, cookies=cookies)) == Refusal("missing")


_SIG = b64(SIGNER.rsa_signer(b"x"))


@pytest.mark.parametrize("query", [
    f"Expires={EXPIRES}&Signature={_SIG}",  # no Key-Pair-Id
    f"Expires={EXPIRES}&Key-Pair-Id=K1",  # no Signature
    f"Signature={_SIG}&Key-Pair-Id=K1",  # neither Expires nor Policy
    f"Expires={EXPIRES}&Policy=e30_&Signature={_SIG}&Key-Pair-Id=K1",  # both
    f"Expires={EXPIRES}&Signature={_SIG}&Signature={_SIG}&Key-Pair-Id=K1",  # twice
    f"Expires={EXPIRES}&Signature={_SIG}&Key-Pair-Id=K1&Key-Pair-Id=K1",
    f"Expires=-5&Signature={_SIG}&Key-Pair-Id=K1",
    f"Expires=1e9&Signature={_SIG}&Key-Pair-Id=K1",
    f"Expires=&Signature={_SIG}&Key-Pair-Id=K1",
    f"Expires={EXPIRES}&Signature=&Key-Pair-Id=K1",
    f"Expires={EXPIRES}&Signature={_SIG[:-2]}&Key-Pair-Id=K1",  # unpadded
    f"Expires={EXPIRES}&Signature={_SIG.replace('~', '/').replace('-', '+')}&Key-Pair-Id=K1",
    f"Expires={EXPIRES}&Signature={_SIG}&Key-Pair-Id=",
    f"Expires={EXPIRES}&Signature={_SIG}&Key-Pair-Id=K1&Hash-Algorithm=sha1",
    f"Policy=not*base64&Signature={_SIG}&Key-Pair-Id=K1",
])
def test_malformed_url(query: str) -> None:
    assert verify(request(VIDEO + "x.ts?" + query)) == Refusal("malformed")


def test_non_canonical_base64_is_malformed() -> None:
    """2048-bit signatures end in two characters and ``__``; the last character holds four
    unused bits. Another character with the same used bits decodes to the same bytes: it must
    not verify (a changed character never does)."""
    signed = _canned()
    query = urlsplit(signed).query
    sig = dict(piece.split("=", 1) for piece in query.split("&"))["Signature"]
    assert sig.endswith("__")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~"
    twin = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "__"  # only unused bits differ

    def standard(text: str) -> bytes:
        return base64.b64decode(text.replace("-", "+").replace("~", "/").replace("_", "="))

    assert twin != sig and standard(twin) == standard(sig)
    assert verify(request(signed.replace(sig, twin))) == Refusal("malformed")


@pytest.mark.parametrize("policy", [
    "not json",
    "[]",
    '{"Statement":[]}',
    '{"Statement":{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600}}}}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600}}},'
    '{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{}}]}',
    '{"Statement":[{"Resource":"*"}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateGreaterThan":{"AWS:EpochTime":1}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":"1700003600"}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1.7e9}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":true}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":1700003600}}]}',
    '{"Statement":[{"Resource":["*"],"Condition":{"DateLessThan":{"AWS:EpochTime":1700003600}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600},'
    '"IpAddress":{"AWS:SourceIp":["192.0.2.0/24"]}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600},'
    '"IpAddress":{"AWS:SourceIp":"192.0.2.0/33"}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600},'
    '"StringLike":{"AWS:Referer":"x"}}}]}',
    '{"Statement":[{"Resource":"*","Effect":"Deny","Condition":{"DateLessThan":'
    '{"AWS:EpochTime":1700003600}}}]}',
    '{"Statement":[{"Resource":"*","Condition":{"DateLessThan":{"AWS:EpochTime":1700003600},'
    '"DateLessThan":{"AWS:EpochTime":1999999999}}}]}',
])
def test_malformed_policy_even_when_signed(policy: str) -> None:
    assert verify(request(_signed_policy_url(policy))) == Refusal("malformed")


def test_malformed_cookies() -> None:
    url = VIDEO + "x.ts"
    cookies = signed_cookies(url)
    del cookies["CloudFront-Key-Pair-Id"]
    assert verify(request(url, cookies=cookies)) == Refusal("malformed")
    both = signed_cookies(url) | {"CloudFront-Policy": b64(custom_policy().encode())}
    assert verify(request(url, cookies=both)) == Refusal("malformed")


def test_bad_signature() -> None:
    signed = _canned()
    sig = dict(p.split("=", 1) for p in urlsplit(signed).query.split("&"))["Signature"]
    flipped = ("B" if sig[5] == "A" else "A").join((sig[:5], sig[6:]))
    assert verify(request(signed.replace(sig, flipped))) == Refusal("bad-signature")
    # signed by another key under K1's id
    forged = signer("K1", OTHER_KEY).generate_presigned_url(VIDEO + "x.ts?a=1",
                                                             date_less_than=at(EXPIRES))
    assert verify(request(forged)) == Refusal("bad-signature")
    # a custom policy whose text was changed (to extend it) no longer verifies
    policy = custom_policy()
    signed = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=policy)
    longer = policy.replace(str(EXPIRES), str(EXPIRES + 10**6))
    tampered = signed.replace(b64(policy.encode()), b64(longer.encode()))
    assert verify(request(tampered)) == Refusal("bad-signature")
    # the expiry of a canned URL is signed
    assert verify(request(signed_expires(_canned(), EXPIRES + 1))) == Refusal("bad-signature")


def signed_expires(url: str, expires: int) -> str:
    return url.replace(f"Expires={EXPIRES}", f"Expires={expires}")


def test_unknown_key() -> None:
    signed = _canned()
    assert verify(request(signed), KeyRing({"K2": _pem(OTHER_KEY)})) == Refusal("unknown-key")
    assert verify(request(signed.replace("Key-Pair-Id=K1", "Key-Pair-Id=k1"))) == Refusal(
        "unknown-key")
    assert verify(request(signed), KeyRing({"K1": b"not a pem"})) == Refusal("unknown-key")
    url = VIDEO + "x.ts"
    cookies = signed_cookies(url, kid="K9")
    assert verify(request(url, cookies=cookies)) == Refusal("unknown-key")


def test_other_key_pair_id_in_the_ring() -> None:
    signed = _canned()
    assert verify(request(signed.replace("Key-Pair-Id=K1", "Key-Pair-Id=K2"))) == Refusal(
        "bad-signature")


def test_expired_and_not_yet_valid() -> None:
    assert verify(request(_canned(), now=EXPIRES)) == Refusal("expired")
    assert verify(request(_canned(), now=EXPIRES - 1)) == Grant(expires=EXPIRES)
    custom = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=custom_policy(starts=STARTS))
    assert verify(request(custom, now=EXPIRES + 5)) == Refusal("expired")
    assert verify(request(custom, now=STARTS - 5)) == Refusal("not-yet-valid")
    url = VIDEO + "x.ts"
    assert verify(request(url, now=EXPIRES, cookies=signed_cookies(url))) == Refusal("expired")


def test_acl() -> None:
    custom = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=custom_policy())
    query = urlsplit(custom).query
    assert verify(request(f"https://{HOST}/v/abd/x.ts?{query}")) == Refusal("acl")
    assert verify(request(f"https://evil.example/v/abc/x.ts?{query}")) == Refusal("acl")
    assert verify(request(f"https://{HOST}/v/abc/x.ts?{query}"), scheme="http") == Refusal("acl")
    url = f"https://{HOST}/v/zzz/x.ts"
    cookies = signed_cookies(url, policy=custom_policy())
    assert verify(request(url, cookies=cookies)) == Refusal("acl")


def test_ip() -> None:
    custom = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=custom_policy(ip=NETWORK))
    assert verify(request(custom, client_ip="192.0.3.7")) == Refusal("ip")
    assert verify(request(custom, client_ip="")) == Refusal("ip")
    assert verify(request(custom, client_ip="not an address")) == Refusal("ip")
    single = SIGNER.generate_presigned_url(VIDEO + "x.ts", policy=custom_policy(ip=CLIENT))
    assert isinstance(verify(request(single)), Grant)  # botocore appends /32
    assert verify(request(single, client_ip="192.0.2.8")) == Refusal("ip")


# --- properties -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    """A signed request split into what the tests change: its own query pieces (in order) and
    the CloudFront fields, in the query (as pieces, in order) or in cookies."""

    scheme_host: str
    path: str
    own: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]
    carrier: str  # "query" | "cookie"
    kind: str  # "canned" | "exact" | "wildcard"

    def url(self, path: str | None = None) -> str:
        pieces = self.own + (tuple(f"{n}={v}" for n, v in self.fields)
                             if self.carrier == "query" else ())
        base = self.scheme_host + (self.path if path is None else path)
        return base + ("?" + "&".join(pieces) if pieces else "")

    def request(self, *, path: str | None = None, now: float = NOW,
                client_ip: str = CLIENT) -> TokenRequest:
        cookies = ({"CloudFront-" + n: v for n, v in self.fields}
                   if self.carrier == "cookie" else {})
        return request(self.url(path), now=now, client_ip=client_ip, cookies=cookies)


def mint(scheme_host: str, path: str, own: tuple[str, ...], kind: str, carrier: str,
         *, ip: str | None = NETWORK) -> Token:
    """Sign with botocore (URLs) or build the cookies from the same policy and signature."""
    url = scheme_host + path + ("?" + "&".join(own) if own else "")
    if kind == "canned":
        policy = None
    elif kind == "exact":
        policy = custom_policy(url, starts=STARTS, ip=ip)
    else:
        policy = custom_policy(scheme_host + "/v/abc/*", starts=STARTS, ip=ip)
    if carrier == "cookie":
        cookies = signed_cookies(url, policy=policy)
        fields = tuple((name.removeprefix("CloudFront-"), value)
                       for name, value in cookies.items())
    else:
        signed = (SIGNER.generate_presigned_url(url, date_less_than=at(EXPIRES))
                  if policy is None else SIGNER.generate_presigned_url(url, policy=policy))
        query = urlsplit(signed).query
        pieces = query.split("&")[len(own):]
        fields = tuple(tuple(piece.split("=", 1)) for piece in pieces)
        assert Token(scheme_host, path, own, fields, carrier, kind).url() == signed
    return Token(scheme_host, path, own, fields, carrier, kind)


POOL = [
    mint(scheme_host, path, own, kind, carrier)
    for scheme_host in (f"https://{HOST}", "https://CDN.Example.com:8443")
    for path, own in (("/v/abc/master.m3u8", ()),
                      ("/v/abc/720p/seg-1.m4s", ("a=1", "b=two", "a=3")),
                      ("/v/abc/720p/index.m3u8", ("CMCD=bl%3D2000", "x=", "y")))
    for kind in ("canned", "exact", "wildcard")
    for carrier in ("query", "cookie")
]

_segment = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~%",
                   min_size=1, max_size=10).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_segment, min_size=1, max_size=4).map(lambda segs: "/" + "/".join(segs))
_value = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$'()*+,;:@/?=",
    max_size=8)
_name = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
                min_size=1, max_size=8).filter(lambda n: n not in CF_NAMES)
_own = st.lists(st.tuples(_name, st.none() | _value).map(
    lambda nv: nv[0] if nv[1] is None else f"{nv[0]}={nv[1]}"), max_size=4).map(tuple)
_hosts = st.sampled_from([f"https://{HOST}", f"https://{HOST}:8443", "https://CDN.Example.com",
                          "https://d111111abcdef8.cloudfront.net"])


def examples(count: int) -> settings:
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


_any = st.integers(0, 2**16)  # an index, taken modulo what it indexes


@examples(1500)
@given(scheme_host=_hosts, path=_paths, own=_own, kind=st.sampled_from(["canned", "exact"]),
       carrier=st.sampled_from(["query", "cookie"]), order=st.permutations(range(3)),
       slots=st.lists(_any, min_size=3, max_size=3))
def test_valid_tokens_always_grant(scheme_host, path, own, kind, carrier, order, slots) -> None:
    token = mint(scheme_host, "/v/abc" + path, own, kind, carrier)
    if carrier == "query":  # the CloudFront parameters may sit anywhere, own order kept
        pieces = list(token.own)
        for index, slot in zip(order, slots, strict=True):
            name, value = token.fields[index]
            pieces.insert(slot % (len(pieces) + 1), f"{name}={value}")
        req = replace(token.request(), query="&".join(pieces))
    else:
        req = token.request()
    verdict = verify(req)
    assert isinstance(verdict, Grant), verdict
    assert verdict.expires == EXPIRES
    assert verdict.carried == (token.fields if kind != "canned" and carrier == "query"
                               else ())


_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@examples(2500)
@given(token=st.sampled_from(POOL), which=_any, where=_any, char=_printable)
def test_a_changed_character_never_grants(token: Token, which: int, where: int,
                                          char: str) -> None:
    index = which % len(token.fields)
    name, value = token.fields[index]
    at_ = where % len(value)
    assume(char != value[at_])
    fields = list(token.fields)
    fields[index] = (name, value[:at_] + char + value[at_ + 1:])
    verdict = verify(replace(token, fields=tuple(fields)).request())
    assert isinstance(verdict, Refusal), (name, verdict)


@examples(1000)
@given(token=st.sampled_from(POOL), how=st.sampled_from(["value", "field", "tail"]),
       which=_any, cut=_any)
def test_a_truncated_token_never_grants(token: Token, how: str, which: int, cut: int) -> None:
    index = which % len(token.fields)
    name, value = token.fields[index]
    full = token.request()
    if how == "value":  # one value cut short
        fields = list(token.fields)
        fields[index] = (name, value[:cut % len(value)])
        req = replace(token, fields=tuple(fields)).request()
    elif how == "field":  # a field dropped
        req = replace(token, fields=token.fields[:index] + token.fields[index + 1:]).request()
    elif token.carrier == "query":  # the URL cut short
        own = len("&".join(token.own))
        req = replace(full, query=full.query[:own + cut % (len(full.query) - own)])
    else:  # the last cookie's value cut short
        name, value = token.fields[-1]
        cookies = dict(full.cookies)
        cookies["CloudFront-" + name] = value[:cut % len(value)]
        req = replace(full, cookies=cookies)
    assert isinstance(verify(req), Refusal)


@examples(800)
@given(scheme_host=_hosts, path=_paths,
       own=_own.filter(lambda own: len(set(own)) > 1), kind=st.sampled_from(["canned", "exact"]),
       carrier=st.sampled_from(["query", "cookie"]), order=st.permutations(range(4)))
def test_reordered_own_parameters_never_grant(scheme_host, path, own, kind, carrier,
                                              order) -> None:
    """A canned policy and an exact custom Resource sign the order of the URL's parameters."""
    moved = tuple(own[i] for i in order if i < len(own))
    assume(moved != own)
    token = mint(scheme_host, "/v/abc" + path, own, kind, carrier)
    assert isinstance(verify(replace(token, own=moved).request()), Refusal)


@examples(800)
@given(token=st.sampled_from(POOL), which=_any,
       flips=st.lists(st.booleans(), min_size=16, max_size=16))
def test_case_changed_names_never_grant(token: Token, which: int, flips: list[bool]) -> None:
    index = which % len(token.fields)
    name, value = token.fields[index]
    changed = "".join(c.swapcase() if f else c for f, c in zip(flips, name, strict=False))
    assume(changed != name)
    fields = list(token.fields)
    fields[index] = (changed, value)
    assert isinstance(verify(replace(token, fields=tuple(fields)).request()), Refusal)


@examples(1500)
@given(token=st.sampled_from(POOL), now=st.integers(STARTS - 2000, EXPIRES + 2000),
       skew=st.sampled_from([0, 1, 30, 300]))
def test_valid_exactly_inside_the_time_window(token: Token, now: int, skew: int) -> None:
    verdict = verify(token.request(now=now), clock_skew=skew)
    if now - skew >= EXPIRES:
        assert verdict == Refusal("expired")
    elif token.kind != "canned" and now + skew <= STARTS:
        assert verdict == Refusal("not-yet-valid")
    else:
        assert isinstance(verdict, Grant)


@examples(1000)
@given(token=st.sampled_from(POOL), path=_paths)
def test_replayed_on_another_path(token: Token, path: str) -> None:
    """Canned and exact tokens grant their own path alone; a wildcard one its video's."""
    for other in (path, "/v/abc" + path):
        verdict = verify(token.request(path=other))
        if other == token.path or (token.kind == "wildcard" and other.startswith("/v/abc/")):
            assert isinstance(verdict, Grant)
        else:
            assert isinstance(verdict, Refusal)


@examples(1000)
@given(token=st.sampled_from([t for t in POOL if t.kind != "canned"]),
       client=st.ip_addresses() | st.integers(0, 255).map(lambda n: f"192.0.2.{n}")
       | st.integers(0, 255).map(lambda n: f"192.0.3.{n}"))
def test_bound_to_its_address_range(token: Token, client) -> None:
    verdict = verify(token.request(client_ip=str(client)))
    address = ipaddress.ip_address(str(client))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.version == 4 and address in ipaddress.ip_network(NETWORK):
        assert isinstance(verdict, Grant)
    else:
        assert verdict == Refusal("ip")


@examples(400)
@given(token=st.sampled_from(POOL),
       kid=st.sampled_from(["K2", "k1", "K1 ", ""]) | st.text(
           "K123abc-_~%+ ", max_size=6).filter(lambda kid: kid != "K1"),
       retire=st.booleans())
def test_other_or_retired_key_pair_id_never_grants(token: Token, kid: str, retire: bool) -> None:
    if retire:  # the ring after a reload that retired K1
        assert verify(token.request(), KeyRing({"K2": _pem(OTHER_KEY)})) == Refusal(
            "unknown-key")
    fields = tuple((n, kid if n == "Key-Pair-Id" else v) for n, v in token.fields)
    assert isinstance(verify(replace(token, fields=fields).request()), Refusal)
