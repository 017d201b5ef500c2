"""Akamai EdgeAuth tokens (``edge/auth/akamai.py``): cross-checked against the reference minting
library (``akamai-edgeauth``), the refusal reason of each case, and properties.

The property tests generate 11,800 cases together (their ``max_examples``); every token they
verify is minted by ``akamai.edgeauth.EdgeAuth`` and by our ``sign``, which must agree byte
for byte. The file takes about 20 s of CPU. Each property was seen to fail against a
deliberately broken verifier (signature ignored, a prefix of the HMAC accepted, fields in any
order, names or HMAC in any case, a field twice, ``exp``/``st`` unchecked, the skew's sign
wrong, the ACL unchecked, ``*`` stopping at ``/``, ``?`` literal, the address unchecked or
compared as text, a token parameter twice, the query value decoded, only the first key tried,
grants cached by token).
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, replace
from urllib.parse import quote, quote_plus, unquote

import pytest
from akamai.edgeauth import EdgeAuth
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reelcdn.edge.auth import akamai
from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest

KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
OTHER = "ffeeddccbbaa99887766554433221100"
RING = KeyRing({"k1": bytes.fromhex(KEY)}, "k1")
NOW = 1_700_000_000
ALGOS = ("sha256", "sha1", "md5")
FAST = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


def theirs(acl=None, url=None, **options) -> str:
    options.setdefault("key", KEY)
    ea = EdgeAuth(**options)
    return ea.generate_acl_token(acl) if acl is not None else ea.generate_url_token(url)


def check(path="/v/abc/index.m3u8", *, token=None, query=None, cookies=None, headers=None,
          client_ip="203.0.113.7", now=NOW, ring=RING, **options) -> Grant | Refusal:
    if query is None:
        query = "" if token is None else f"hdnts={token}"
    request = TokenRequest(path=path, query=query, cookies=cookies or {}, headers=headers or {},
                           client_ip=client_ip, now=now)
    return akamai.verify(request, ring, **options)


# -- the reference library, fixed inputs ----------------------------------------------------

CROSS_CASES = [
    # (EdgeAuth options, acl or url, request path, verify options)
    ({"end_time": NOW + 60}, {"acl": "/v/abc/*"}, "/v/abc/1080p/seg_1.m4s", {}),
    ({"start_time": NOW - 5, "end_time": NOW + 60}, {"acl": ["/v/abc/*", "/v/def/*"]},
     "/v/def/master.m3u8", {}),
    ({"end_time": NOW + 60}, {"acl": "/v/abc/*!/v/x?z/index.m3u8"}, "/v/xyz/index.m3u8", {}),
    ({"end_time": NOW + 60}, {"url": "/v/abc/master.m3u8"}, "/v/abc/master.m3u8", {}),
    ({"end_time": NOW + 60, "ip": "203.0.113.7"}, {"acl": "/*"}, "/v/a/b", {}),
    ({"end_time": NOW + 60, "session_id": "user-42", "payload": "plan=gold"}, {"acl": "/v/*"},
     "/v/q", {}),
    ({"end_time": NOW + 60, "algorithm": "sha1"}, {"acl": "/v/*"}, "/v/q", {"algorithm": "sha1"}),
    ({"end_time": NOW + 60, "algorithm": "md5"}, {"url": "/v/q/i.m3u8"}, "/v/q/i.m3u8",
     {"algorithm": "md5"}),
    ({"end_time": NOW + 60, "algorithm": "SHA256"}, {"acl": "/v/*"}, "/v/q",
     {"algorithm": "SHA256"}),
    ({"end_time": NOW + 60, "escape_early": True, "ip": "2001:db8::7", "session_id": "a b/c",
      "payload": "x&y=z+ok"}, {"acl": "/v/*"}, "/v/q", {"escape_early": True}),
    ({"end_time": NOW + 60, "escape_early": True}, {"url": "/v/a b/é.ts"}, "/v/a b/é.ts",
     {"escape_early": True}),
    ({"end_time": NOW + 60, "escape_early": False}, {"url": "/v/a b/é.ts"}, "/v/a b/é.ts", {}),
    ({"end_time": NOW + 60, "salt": "pepper"}, {"url": "/v/s"}, "/v/s", {"salt": "pepper"}),
    ({"start_time": NOW - 10, "window_seconds": 300}, {"acl": "/v/*"}, "/v/w", {}),
]


@pytest.mark.parametrize(("options", "target", "path", "verify_options"), CROSS_CASES)
def test_reference_tokens_verify_and_ours_are_identical(options, target, path,
                                                        verify_options) -> None:
    token = theirs(**target, **options)
    client_ip = options.get("ip", "203.0.113.7")
    grant = check(path, token=token, client_ip=client_ip, **verify_options)
    fields = akamai.parse(token, algorithm=verify_options.get("algorithm", "sha256"))
    assert isinstance(fields, akamai.EdgeToken)
    assert grant == Grant(expires=float(fields.exp), carried=(("hdnts", token),))
    ours = akamai.sign(KEY, exp=fields.exp, st=options.get("start_time"), ip=options.get("ip"),
                       session_id=options.get("session_id"), data=options.get("payload"),
                       algorithm=options.get("algorithm", "sha256"),
                       escape_early=options.get("escape_early", False),
                       salt=options.get("salt", ""), **target)
    assert ours == token


def test_payload_with_tilde_is_escaped_early_only() -> None:
    # quote_plus leaves "~" alone (RFC 3986 unreserved): even escape_early cannot carry it.
    token = theirs(acl="/v/*", end_time=NOW + 60, payload="a~b", escape_early=True)
    assert check("/v/x", token=token, escape_early=True) == Refusal("malformed")
    with pytest.raises(ValueError):
        akamai.sign(KEY, acl="/v/*", exp=NOW + 60, data="a~b", escape_early=True)


def test_clock_driven_reference_tokens() -> None:
    """``start_time="now"`` and a window without a start read the clock: verify at that time,
    and sign ours with the times the token carries."""
    before = int(time.time())
    for options in ({"start_time": "now", "window_seconds": 120}, {"window_seconds": 120}):
        token = theirs(acl="/v/*", **options)
        fields = akamai.parse(token)
        assert isinstance(fields, akamai.EdgeToken)
        assert before + 120 <= fields.exp <= int(time.time()) + 120
        assert check("/v/a", token=token, now=fields.exp - 1) == Grant(
            float(fields.exp), (("hdnts", token),))
        assert akamai.sign(KEY, acl="/v/*", exp=fields.exp, st=fields.st) == token


def test_known_answer() -> None:
    """The format pinned by one vector, independently of the reference library."""
    token = akamai.sign("00112233445566778899aabbccddeeff", acl="/v/*", st=1000, exp=2000,
                        ip="198.51.100.1", session_id="s1", data="d1")
    assert token == ("ip=198.51.100.1~st=1000~exp=2000~acl=/v/*~id=s1~data=d1~hmac="
                     "023caade5c3a20714978d0fbd09758a44915cebabbfa9de12c5633f88adfcd31")


# -- parse ----------------------------------------------------------------------------------

def test_parse_reads_every_field() -> None:
    token = akamai.sign(KEY, acl="/v/*!/w/?", st=10, exp=20, ip="192.0.2.1", session_id="i",
                        data="d=e")
    fields = akamai.parse(token)
    assert isinstance(fields, akamai.EdgeToken)
    assert (fields.ip, fields.st, fields.exp, fields.acl, fields.id, fields.data) == (
        "192.0.2.1", 10, 20, "/v/*!/w/?", "i", "d=e")
    assert fields.signed == token.rsplit("~hmac=", 1)[0]
    assert len(fields.hmac) == 64


H = "a" * 64
MALFORMED = [
    "",
    f"hmac={H}",                                   # no exp
    "exp=2000",                                    # no hmac
    "exp=2000~hmac=",                              # empty hmac
    f"exp=2000~hmac={'a' * 63}",                   # short hmac
    f"exp=2000~hmac={'a' * 40}",                   # a sha1 length under sha256
    f"exp=2000~hmac={'g' * 64}",                   # not hex
    f"exp=2000~hmac={'A' * 64}",                   # hexdigest is lowercase
    f"exp=2000~acl=/*~hmac={H}~hmac={H}",           # a field twice
    f"exp=2000~exp=2000~hmac={H}",
    f"acl=/*~exp=2000~hmac={H}",                   # out of order
    f"exp=2000~hmac={H}~acl=/*",                   # hmac not last
    f"exp=2000~url=/v/a~hmac={H}",                 # the url is signed, never sent
    f"exp=2000~acl=/*~url=/*~hmac={H}",
    f"exp=2000~foo=1~hmac={H}",                    # unknown field
    f"EXP=2000~hmac={H}",                          # names are lowercase
    f"exp=2000~nothing~hmac={H}",                  # no "="
    f"exp=2000~acl=~hmac={H}",                     # empty value
    f"ip=~exp=2000~hmac={H}",
    f"exp=2000~~hmac={H}",                         # empty field
    f"exp=-5~hmac={H}",                            # not digits
    f"exp=20.5~hmac={H}",
    f"exp=1_000~hmac={H}",
    f"exp= 2000~hmac={H}",
    f"exp=\u0662\u0660\u0660\u0660~hmac={H}",      # non-ASCII digits (int() takes them)
    f"st=x~exp=2000~hmac={H}",
    f"exp={'9' * 21}~hmac={H}",
    f"exp=2000~acl=/a!!/b~hmac={H}",               # an empty ACL entry
    f"exp=2000~acl=/a!~hmac={H}",
    f"exp=2000~data=a\nb~hmac={H}",                # a control character
    f"exp=2000~data={'x' * 5000}~hmac={H}",        # too long
    f"~exp=2000~hmac={H}",
    f"exp=2000~hmac={H}~",
]


@pytest.mark.parametrize("token", MALFORMED)
def test_parse_refuses_what_is_not_edgeauth(token: str) -> None:
    assert akamai.parse(token) == Refusal("malformed")
    assert check(cookies={"__token__": token}) == Refusal("malformed")


def test_hmac_length_follows_the_algorithm() -> None:
    for algorithm in ALGOS:
        token = akamai.sign(KEY, acl="/*", exp=NOW + 1, algorithm=algorithm)
        for other in ALGOS:
            fields = akamai.parse(token, algorithm=other)
            assert isinstance(fields, akamai.EdgeToken) == (other == algorithm)
    with pytest.raises(ValueError):
        akamai.parse(token, algorithm="sha512")
    with pytest.raises(ValueError):
        check(token=token, algorithm="sha512")


# -- refusal reasons ------------------------------------------------------------------------

def acl_token(**kw) -> str:
    kw.setdefault("acl", "/v/abc/*")
    kw.setdefault("exp", NOW + 60)
    return akamai.sign(KEY, **kw)


def test_missing_when_nowhere_the_node_looks() -> None:
    token = acl_token()
    assert check() == Refusal("missing")
    assert check(query=f"token={token}&hdnts_x=1") == Refusal("missing")
    assert check(cookies={"hdnts": token}, sources=("query",)) == Refusal("missing")
    assert check(query=f"hdnts={token}", sources=("cookie",)) == Refusal("missing")
    assert check(query="hdnts") == Refusal("missing")  # a name without "=" carries nothing


def test_sources_names_and_what_is_carried() -> None:
    token = acl_token()
    grant_q = check(query=f"a=1&__token__={token}&b=2")
    assert grant_q == Grant(float(NOW + 60), (("__token__", token),))
    assert check(cookies={"__token__": token}) == Grant(float(NOW + 60))
    assert check(headers={"hdnts": token}, sources=("header",)) == Grant(float(NOW + 60))
    assert check(query=f"tok={token}", token_names=("tok",)) == Grant(
        float(NOW + 60), (("tok", token),))
    # the first source in order wins: a bad query token is not rescued by a good cookie
    assert check(query="hdnts=garbage", cookies={"hdnts": token}) == Refusal("malformed")
    assert check(query="hdnts=garbage", cookies={"hdnts": token},
                 sources=("cookie", "query")) == Grant(float(NOW + 60))
    with pytest.raises(ValueError):
        check(query=f"hdnts={token}", sources=("body",))


def test_query_token_is_read_as_written_or_decoded_when_urlencoded_whole() -> None:
    token = acl_token(data="a+b%2f", escape_early=False)
    # as written: the "+" and "%2f" are what was signed
    assert isinstance(check(query=f"hdnts={token}"), Grant)
    # decoding it would change what was signed
    assert check(query=f"hdnts={token.replace('%2f', '/')}") == Refusal("bad-signature")
    assert check(query=f"hdnts={token.replace('+', '%20')}") == Refusal("bad-signature")
    # urlencode()d whole (no "=" left): decoded once, carried as written
    encoded = quote_plus(token, safe="")
    assert check(query=f"hdnts={encoded}") == Grant(float(NOW + 60), (("hdnts", encoded),))
    # escape_early writes escapes into the token: it verifies as written
    early = acl_token(acl="%2fv%2fabc%2f*", ip="2001:db8::1", data="x y/z", escape_early=True)
    assert early.startswith("ip=2001%3adb8%3a%3a1~")
    assert isinstance(check(query=f"hdnts={early}", client_ip="2001:db8::1",
                            escape_early=True), Grant)


def test_token_parameter_twice_is_malformed() -> None:
    token = acl_token()
    assert check(query=f"hdnts={token}&hdnts={token}") == Refusal("malformed")
    assert check(query=f"hdnts={token}&__token__={token}") == Refusal("malformed")
    assert check(query=f"hdnts={token}&hdnts=") == Refusal("malformed")
    assert check(query="hdnts=") == Refusal("malformed")


def test_unknown_key_with_an_empty_ring_bad_signature_otherwise() -> None:
    token = acl_token()
    assert check(token=token, ring=KeyRing({})) == Refusal("unknown-key")
    assert check(token=token, ring=KeyRing({"x": bytes.fromhex(OTHER)})) == Refusal(
        "bad-signature")
    # every key of the ring is tried: the signing one may be anywhere
    ring = KeyRing({"a": bytes.fromhex(OTHER), "b": bytes.fromhex(KEY), "c": b"\x01" * 16})
    assert isinstance(check(token=token, ring=ring), Grant)


def test_signature_is_checked_before_anything_else() -> None:
    token = acl_token(exp=NOW - 100, ip="192.0.2.9", acl="/other/*")
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert check(token=forged) == Refusal("bad-signature")
    assert check(token=acl_token(exp=NOW - 100), salt="pepper") == Refusal("bad-signature")
    assert check(token=acl_token(salt="pepper")) == Refusal("bad-signature")
    assert isinstance(check(token=acl_token(salt="pepper"), salt="pepper"), Grant)
    # escape_early changes what a URL token signs (and so the verdict)
    url = akamai.sign(KEY, url="/v/a b", exp=NOW + 60, escape_early=True)
    assert check("/v/a b", token=url) == Refusal("bad-signature")
    assert isinstance(check("/v/a b", token=url, escape_early=True), Grant)


def test_time_window_edges_and_skew() -> None:
    token = acl_token(st=NOW, exp=NOW + 60)
    assert check(token=token, now=NOW - 1) == Refusal("not-yet-valid")
    assert check(token=token, now=NOW - 0.001) == Refusal("not-yet-valid")
    assert isinstance(check(token=token, now=NOW), Grant)
    assert isinstance(check(token=token, now=NOW + 59.999), Grant)
    assert check(token=token, now=NOW + 60) == Refusal("expired")
    assert isinstance(check(token=token, now=NOW - 5, clock_skew=5), Grant)
    assert check(token=token, now=NOW - 5.5, clock_skew=5) == Refusal("not-yet-valid")
    assert isinstance(check(token=token, now=NOW + 64.9, clock_skew=5), Grant)
    assert check(token=token, now=NOW + 65, clock_skew=5) == Refusal("expired")
    # no st: valid from any time until exp
    assert isinstance(check(token=acl_token(exp=NOW + 60), now=0), Grant)
    # time is checked before the ACL and the address
    late = acl_token(acl="/elsewhere", ip="192.0.2.1", exp=NOW)
    assert check(token=late) == Refusal("expired")


@pytest.mark.parametrize(("acl", "path", "allowed"), [
    ("/*", "/", True),
    ("/*", "/v/abc/1080p/seg_1.m4s", True),
    ("/v/abc/*", "/v/abc/", True),
    ("/v/abc/*", "/v/abc", False),
    ("/v/abc/*", "/v/abcd/x", False),
    ("/v/abc/index.m3u8", "/v/abc/index.m3u8", True),
    ("/v/abc/index.m3u8", "/v/abc/index.m3u8x", False),
    ("/v/abc/index.m3u8", "/v/abc/index", False),
    ("/v/*/index.m3u8", "/v/abc/720p/index.m3u8", True),   # "*" spans "/"
    ("/v/*/index.m3u8", "/v/abc/720p/iframes.m3u8", False),
    ("/v/abc/seg_?.m4s", "/v/abc/seg_7.m4s", True),
    ("/v/abc/seg_?.m4s", "/v/abc/seg_17.m4s", False),
    ("/v/abc/seg_?.m4s", "/v/abc/seg_.m4s", False),
    ("/v/a*b*c", "/v/aXbYbZc", True),
    ("/v/a*b*c", "/v/aXbYbZ", False),
    ("/x!/v/abc/*", "/v/abc/a", True),
    ("/x!/y", "/v/abc/a", False),
    ("%2fv%2fabc%2f*", "/v/abc/a", True),                 # escaped ACLs are decoded
    ("/v/a%20b/*", "/v/a b/c", True),
    ("/v/a%2ab", "/v/aXb", False),                        # an escaped "*" is literal
    ("/v/a%2ab", "/v/a*b", True),
    ("/v/a%3fb", "/v/a?b", True),
    ("/v/a%3fb", "/v/aXb", False),
    ("/v/a%21b", "/v/a!b", True),                         # "!" in a path, escaped
    ("/V/*", "/v/a", False),                              # case matters
    ("*", "/anything", True),
    ("?", "/", True),
    ("**?*", "/", True),
    ("**?*?", "/", False),
])
def test_acl_globs(acl: str, path: str, allowed: bool) -> None:
    assert akamai.acl_allows(acl, path) is allowed
    token = acl_token(acl=acl)
    assert check(path, token=token) == (Grant(float(NOW + 60), (("hdnts", token),))
                                        if allowed else Refusal("acl"))


def test_url_token_grants_its_path_alone_and_ignores_the_query() -> None:
    token = akamai.sign(KEY, url="/v/abc/master.m3u8", exp=NOW + 60)
    assert isinstance(check("/v/abc/master.m3u8", query=f"x=1&hdnts={token}&y=2"), Grant)
    assert check("/v/abc/master.m3u8x", token=token) == Refusal("bad-signature")
    assert check("/v/abc/", token=token) == Refusal("bad-signature")


def test_ip_binding() -> None:
    token = acl_token(ip="203.0.113.7")
    assert check(token=token, client_ip="203.0.113.8") == Refusal("ip")
    assert check(token=token, client_ip="") == Refusal("ip")
    assert isinstance(check(token=token, client_ip="::ffff:203.0.113.7"), Grant)
    v6 = acl_token(ip="2001:db8:0:0::7")
    assert isinstance(check(token=v6, client_ip="2001:db8::7"), Grant)
    assert check(token=v6, client_ip="2001:db8::8") == Refusal("ip")
    early = acl_token(ip="2001:db8::7", escape_early=True)
    assert isinstance(check(token=early, client_ip="2001:db8::7", escape_early=True), Grant)
    # the ACL is checked before the address
    both = acl_token(acl="/elsewhere", ip="192.0.2.1")
    assert check(token=both, client_ip="192.0.2.2") == Refusal("acl")


def test_sign_refuses_what_verify_would() -> None:
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW)                                  # neither acl nor url
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, acl="/a", url="/a")              # both
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, acl=["/a", "b!c"])
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, acl="/a!!/b")
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, acl="/a~b")
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, st=NOW, acl="/a")                # exp not after st
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, acl="/a", data="x\ny")
    with pytest.raises(ValueError):
        akamai.sign(KEY, exp=NOW, acl="/a", algorithm="sha512")
    for key in ("", "abc", "zz", "0x12"):
        with pytest.raises(ValueError):
            akamai.secret_from_hex(key)
    assert akamai.secret_from_hex("00FF") == b"\x00\xff"
    # the ring's form of a key (decoded bytes) signs as its hex text does
    assert akamai.sign(bytes.fromhex(KEY), acl="/a", exp=NOW) == akamai.sign(KEY, acl="/a",
                                                                            exp=NOW)
    with pytest.raises(ValueError):
        akamai.sign(b"", acl="/a", exp=NOW)


# -- properties -----------------------------------------------------------------------------

# Strategies draw bytes and map them onto alphabets: one draw per string rather than one per
# character keeps generation cheap enough for ~12,000 cases.
SAFE = "abcxyzABC019-._"
PATH_ALPHABET = SAFE + "////" + " %*?!~+=&:é"
VALUE_ALPHABET = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "~") + "éü漢\u2028😀"


def over(alphabet: str, raw: bytes) -> str:
    return "".join(alphabet[b % len(alphabet)] for b in raw)


paths = st.binary(min_size=1, max_size=24).map(lambda raw: "/" + over(PATH_ALPHABET, raw))
value_text = st.binary(min_size=1, max_size=10).map(lambda raw: over(VALUE_ALPHABET, raw))
addresses = st.one_of(st.binary(min_size=4, max_size=4),
                      st.binary(min_size=16, max_size=16)).map(
    lambda raw: str(ipaddress.ip_address(raw)))


def literal(text: str) -> str:
    """``text`` written into an ACL: every character the ACL syntax or the token reads,
    escaped."""
    return quote(text, safe="/").replace("~", "%7E")




def matching_acl(path: str, steps: list[tuple[str, int]], others: list[str], at: int,
                 star_end: bool) -> str:
    """An ACL that matches ``path``, written from it by steps: keep a character (escaped), "?"
    for one, "*" for the next n (n may be 0); the steps run out → the rest is kept."""
    pieces: list[str] = []
    i = 0
    for op, n in steps:
        if i >= len(path):
            break
        if op == "l":
            pieces.append(literal(path[i]))
            i += 1
        elif op == "?":
            pieces.append("?")
            i += 1
        else:
            pieces.append("*")
            i += n
    pieces.append(literal(path[i:]))
    if star_end:
        pieces.append("*")
    entries = list(others)
    entries.insert(at % (len(entries) + 1), "".join(pieces))
    return "!".join(entries)


@dataclass(frozen=True)
class Case:
    """One token and the request it is valid for, with the node's options."""

    token: str
    exp: int
    path: str
    client_ip: str
    now: float
    ring: KeyRing
    options: dict
    where: str = "cookie"       # "query", "query-encoded", "cookie", "header"
    name: str = "hdnts"
    url_token: bool = False

    def request(self, token: str | None = None, **changes) -> TokenRequest:
        token = self.token if token is None else token
        query = cookies = headers = None
        if self.where == "query":
            query = f"a=1&{self.name}={token}&b=%2F"
        elif self.where == "query-encoded":
            query = f"{self.name}={quote_plus(token, safe='')}&b=2"
        elif self.where == "cookie":
            cookies = {self.name: token, "other": "x"}
        else:
            headers = {self.name: token}
        base = TokenRequest(path=self.path, query=query or "", cookies=cookies or {},
                            headers=headers or {}, client_ip=self.client_ip, now=self.now)
        return replace(base, **changes)

    def verify(self, token: str | None = None, ring: KeyRing | None = None,
               **changes) -> Grant | Refusal:
        return akamai.verify(self.request(token, **changes), ring or self.ring, **self.options)


# cases() draws two values — a block of bytes cut into the choices, keys, texts, the path, the
# ACL's steps and the addresses, and the times — since each draw costs: ~12,000 generated
# cases stay within seconds. Each choice reads a byte of its own (a byte's value is spread
# evenly; an integer's bits are not: small integers are favoured).
blocks = st.binary(min_size=260, max_size=260)
times = st.tuples(st.integers(10**6, 2**33), st.integers(0, 10**5), st.integers(1, 10**6))


def cut(block: bytes, at: int, most: int, least: int = 0) -> bytes:
    """A piece of ``block`` from ``at + 1`` whose length (``least``..``most``) is byte ``at``."""
    return block[at + 1: at + 1 + least + block[at] % (most - least + 1)]


def address_of(raw: bytes, v6: bool) -> str:
    return str(ipaddress.ip_address(raw[:16] if v6 else raw[:4]))


def respell(address: str) -> str:
    """Another spelling of one address: IPv4-mapped IPv6 (a dual-stack socket's peer), or
    IPv6 written out in full."""
    parsed = ipaddress.ip_address(address)
    return f"::ffff:{parsed}" if parsed.version == 4 else parsed.exploded


@st.composite
def cases(draw, *, with_ip: bool | None = None, with_st: bool | None = None,
          url_token: bool | None = None) -> Case:
    block = draw(blocks)

    def choose(i: int, options: tuple = (False, True)):
        return options[block[232 + i] % len(options)]

    escape_early, as_list, star_end, window, upper = (choose(i) for i in range(5))
    algorithm = choose(5, ALGOS)
    keys = [cut(block, at, 32, 1).hex() for at in (0, 33, 66)[:choose(6, (1, 2, 3))]]
    signer = keys[block[239] % len(keys)]
    salt, session_id, data = (over(VALUE_ALPHABET, cut(block, at, 9, 1)) if choose(i) else None
                              for i, at in ((8, 99), (9, 109), (10, 119)))
    path = "/" + over(PATH_ALPHABET, cut(block, 130, 20, 1))
    url_token = choose(11) if url_token is None else url_token
    if url_token:
        target: dict = {"url": path}
    else:
        others = [literal("/" + over(PATH_ALPHABET, chunk))
                  for chunk in cut(block, 151, 16).split(b"\0")[:choose(12, (0, 1, 2))]]
        steps = [("lll?*"[b % 5], b // 5 % 7) for b in cut(block, 168, 30)]
        acl = matching_acl(path, steps, others, block[245], star_end)
        target = {"acl": acl.split("!") if as_list else acl}  # the library joins with "!"
    bind = choose(14) if with_ip is None else with_ip
    ip = address_of(block[200:216], choose(15)) if bind else None
    client_ip = ip if ip is not None else address_of(block[216:232], choose(16))
    if ip is not None and choose(23):
        client_ip = respell(ip)  # one address, another spelling
    skew = choose(17, (0.0, 0.0, 2.0, 30.0))
    seconds, back, ahead = draw(times)
    now = seconds + choose(18, (0.0, 0.25, 0.999))
    begin = choose(19) if with_st is None else with_st
    start = seconds - back if begin else None
    exp = seconds + ahead
    options = {"key": signer, "algorithm": algorithm.upper() if upper else algorithm,
               "escape_early": escape_early, "salt": salt, "ip": ip,
               "session_id": session_id, "payload": data, "start_time": start,
               "end_time": exp}
    if start is not None and window:
        options["end_time"], options["window_seconds"] = None, exp - start
    token = theirs(**target, **options)
    # ours, from the same inputs, byte for byte
    assert akamai.sign(signer, exp=exp, st=start, ip=ip, session_id=session_id, data=data,
                       algorithm=algorithm, escape_early=escape_early, salt=salt or "",
                       **target) == token
    where = choose(20, ("query", "query-encoded", "cookie", "header"))
    if where == "query" and "&" in token:
        where = "query-encoded"  # a raw "&" would end the parameter
    name = choose(21, ("hdnts", "__token__"))
    sources = ("header",) if where == "header" else choose(
        22, (("query", "cookie"), ("cookie", "query")))
    ring = KeyRing({f"k{i}": bytes.fromhex(k) for i, k in enumerate(keys)})  # keys may repeat
    return Case(token=token, exp=exp, path=path, client_ip=client_ip, now=now, ring=ring,
                options={"clock_skew": skew, "algorithm": algorithm,
                         "escape_early": escape_early, "salt": salt or "",
                         "sources": sources},
                where=where, name=name, url_token=url_token)


def expected_grant(case: Case, request: TokenRequest | None = None) -> Grant:
    request = request or case.request()
    if case.where.startswith("query"):
        raw = request.query.split(f"{case.name}=", 1)[1].split("&", 1)[0]
        return Grant(float(case.exp), ((case.name, raw),))
    return Grant(float(case.exp))


@settings(max_examples=2000, **FAST)
@given(cases())
def test_valid_tokens_are_granted(case: Case) -> None:
    assert case.verify() == expected_grant(case)


@settings(max_examples=1500, **FAST)
@given(cases(), st.data())
def test_a_flipped_character_is_never_granted(case: Case, data) -> None:
    i = data.draw(st.integers(0, len(case.token) - 1))
    c = data.draw(st.characters(codec="utf-8", exclude_characters=case.token[i]))
    forged = case.token[:i] + c + case.token[i + 1:]
    assert not isinstance(case.verify(forged), Grant)


@settings(max_examples=700, **FAST)
@given(cases(), st.data())
def test_a_truncated_token_is_never_granted(case: Case, data) -> None:
    k = data.draw(st.integers(0, len(case.token) - 1))
    assert not isinstance(case.verify(case.token[:k]), Grant)


@settings(max_examples=700, **FAST)
@given(cases(), st.data())
def test_reordered_fields_are_never_granted(case: Case, data) -> None:
    fields = case.token.split("~")
    order = data.draw(st.permutations(fields))
    assume(order != fields)
    assert not isinstance(case.verify("~".join(order)), Grant)


@settings(max_examples=700, **FAST)
@given(cases(), st.data())
def test_case_changed_names_or_hmac_are_never_granted(case: Case, data) -> None:
    fields = case.token.split("~")
    j = data.draw(st.integers(0, len(fields) - 1))
    name, _, value = fields[j].partition("=")
    if name == "hmac" and data.draw(st.booleans()):
        value = value.upper()
        assume(any(c in "abcdef" for c in fields[j][5:]))
    else:
        name = data.draw(st.sampled_from((name.upper(), name.capitalize(), name.swapcase())))
    fields[j] = f"{name}={value}"
    assert not isinstance(case.verify("~".join(fields)), Grant)


@settings(max_examples=600, **FAST)
@given(cases(), st.data())
def test_duplicated_fields_are_malformed(case: Case, data) -> None:
    fields = case.token.split("~")
    copy = data.draw(st.sampled_from(fields))
    if data.draw(st.booleans()):
        copy = copy.partition("=")[0] + "=" + data.draw(value_text)
    fields.insert(data.draw(st.integers(0, len(fields))), copy)
    assert case.verify("~".join(fields)) == Refusal("malformed")


@settings(max_examples=300, **FAST)
@given(cases(), st.sampled_from(("hdnts", "__token__")), st.booleans())
def test_a_token_parameter_twice_is_malformed(case: Case, other: str, same: bool) -> None:
    second = case.token if same else "exp=1~hmac=" + "0" * 64
    query = f"{case.name}={case.token}&{other}={second}"
    request = case.request(query=query, cookies={}, headers={})
    options = dict(case.options, sources=("query",))
    assert akamai.verify(request, case.ring, **options) == Refusal("malformed")


@settings(max_examples=500, **FAST)
@given(cases(), st.floats(0, 10**7, allow_nan=False))
def test_expired_tokens_are_refused_as_expired(case: Case, late: float) -> None:
    now = case.exp + case.options["clock_skew"] + late
    assert case.verify(now=now) == Refusal("expired")


@settings(max_examples=500, **FAST)
@given(cases(with_st=True), st.floats(0.001, 10**7, allow_nan=False))
def test_early_tokens_are_refused_as_not_yet_valid(case: Case, early: float) -> None:
    start = akamai.parse(case.token, algorithm=case.options["algorithm"]).st
    now = start - case.options["clock_skew"] - early
    assume(now < start - case.options["clock_skew"])  # float rounding
    assert case.verify(now=now) == Refusal("not-yet-valid")


def reference_allows(acl: str, path: str) -> bool:
    """The ACL rule as a regular expression, for small inputs."""
    for entry in acl.split("!"):
        pattern = "".join(".*" if p == "*" else "." if p == "?" else re.escape(unquote(p))
                          for p in re.split(r"([*?])", entry) if p)
        if re.fullmatch(pattern, path, re.DOTALL):
            return True
    return False


small_paths = st.binary(max_size=10).map(lambda raw: "/" + over("ab/", raw))
small_acls = st.binary(min_size=1, max_size=24).map(
    lambda raw: "!".join(e for e in over("ab/*?ab/*?!", raw).split("!") if e) or "?")


@settings(max_examples=1500, **FAST)
@given(small_acls, small_paths)
def test_acl_matching_agrees_with_a_regular_expression(acl: str, path: str) -> None:
    assert akamai.acl_allows(acl, path) is reference_allows(acl, path)


@settings(max_examples=800, **FAST)
@given(cases(url_token=False), small_acls, small_paths)
def test_wrong_acl_is_refused_as_acl(case: Case, acl: str, path: str) -> None:
    assume(not reference_allows(acl, path))
    fields = akamai.parse(case.token, algorithm=case.options["algorithm"])
    token = akamai.sign(case.ring.keys["k0"].hex(), exp=case.exp, st=fields.st, acl=acl,
                        algorithm=case.options["algorithm"])
    options = dict(case.options, salt="", escape_early=False)
    request = case.request(token, path=path)
    assert akamai.verify(request, case.ring, **options) == Refusal("acl")


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    a = ipaddress.ip_address(text)
    return a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a


@settings(max_examples=500, **FAST)
@given(cases(with_ip=True), addresses)
def test_another_address_is_refused_as_ip(case: Case, other: str) -> None:
    assume(address(other) != address(case.client_ip))
    assert case.verify(client_ip=other) == Refusal("ip")


keys16 = st.binary(min_size=16, max_size=16).map(bytes.hex)


@settings(max_examples=500, **FAST)
@given(cases(), st.lists(keys16, min_size=1, max_size=3))
def test_another_key_is_refused_as_bad_signature(case: Case, others: list[str]) -> None:
    signer = {bytes(k) for k in case.ring.keys.values()}
    # HMAC pads a key with zeros to its block: keys equal up to trailing zeros are one key
    assume(not {bytes.fromhex(k).rstrip(b"\0") for k in others}
           & {k.rstrip(b"\0") for k in signer})
    ring = KeyRing({f"o{i}": bytes.fromhex(k) for i, k in enumerate(others)})
    assert case.verify(ring=ring) == Refusal("bad-signature")


@settings(max_examples=500, **FAST)
@given(cases(), keys16)
def test_a_retired_key_fails_from_the_reload(case: Case, new: str) -> None:
    old = dict(case.ring.keys)
    assume(bytes.fromhex(new).rstrip(b"\0") not in {k.rstrip(b"\0") for k in old.values()})
    assert case.verify(ring=KeyRing({**old, "new": bytes.fromhex(new)}, "new")) == \
        expected_grant(case)
    assert case.verify(ring=KeyRing({"new": bytes.fromhex(new)}, "new")) == \
        Refusal("bad-signature")


@settings(max_examples=500, **FAST)
@given(cases(url_token=True), paths)
def test_a_url_token_replayed_on_another_path_fails(case: Case, other: str) -> None:
    assume(other != case.path)
    assert case.verify() == expected_grant(case)
    assert case.verify(path=other) == Refusal("bad-signature")
