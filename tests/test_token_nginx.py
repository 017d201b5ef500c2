"""nginx ``secure_link_md5`` links (``edge/auth/nginx_md5.py``): nginx's own answers, and
properties no link may break.

Three parts: the expression syntax and nginx's edge cases one by one; hypothesis properties
(forged, truncated, case-changed, expired, replayed on another path or from another address,
signed with another or a retired key: never a grant; a good link: always one); and, marked
``slow``, a real nginx (Debian's, ``--with-http_secure_link_module``) asked about a few hundred
links that this module is asked about too, the two verdicts compared.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import socket
import string
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reelcdn.edge.auth.nginx_md5 import (
    DEFAULT_EXPRESSION,
    Expression,
    decode_hash,
    query_arg,
    sign,
    verify,
)
from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest
from reelcdn.extensions.target import canonical_path
from reelcdn.loadtest.bench.procs import free_port

SECRET = b"s3cr3t"
RING = KeyRing({"k1": SECRET}, "k1")
EXPIRES = 2_000_000_000
NOW = 1_900_000_000.0
IP = "203.0.113.7"
B64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def link(params: dict[str, str], **extra: str) -> str:
    return "&".join(f"{name}={value}" for name, value in {**params, **extra}.items())


def request(path: str, query: str, *, ip: str = IP, now: float = NOW,
            headers: dict[str, str] | None = None) -> TokenRequest:
    return TokenRequest(path=path, query=query, client_ip=ip, now=now, headers=headers or {})


def md5_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.md5(data).digest()).rstrip(b"=").decode()


# -- the expression ------------------------------------------------------------------------


def test_expression_parts_braces_and_case_insensitive_names():
    expr = Expression.parse("${secure_link_expires}$URI$Remote_Addr x$secret-${arg_sid}y")
    assert expr.parts == ((True, "secure_link_expires"), (True, "uri"), (True, "remote_addr"),
                          (False, b" x"), (True, "secret"), (False, b"-"),
                          (True, "arg_sid"), (False, b"y"))
    assert Expression.parse("$http_X_Viewer$http_user_agent$secret").headers == (
        "x-viewer", "user-agent")


@pytest.mark.parametrize(("text", "message"), [
    ("$args $secret", r"unknown variable \$args"),
    ("$request_uri$secret", r"unknown variable \$request_uri"),
    ("$arg_ $secret", r"unknown variable \$arg_"),
    ("$http_$secret", r"unknown variable \$http_"),
    ("$1$secret", r"regex capture \$1"),
    ("${uri$secret", "closing bracket"),
    ("$ $secret", "invalid variable name"),
    ("${}$secret", "invalid variable name"),
    ("$uri$remote_addr secret", r"without \$secret"),
])
def test_expression_errors_name_the_variable(text, message):
    with pytest.raises(ValueError, match=message):
        Expression.parse(text)


def test_nginx_documentation_example_hash():
    # The nginx documentation's shell recipe, with the secret written as $secret here:
    # echo -n '2147483647/s/link127.0.0.1 secret' | openssl md5 -binary | openssl base64 |
    #   tr +/ -_ | tr -d =
    expected = md5_b64(b"2147483647/s/link127.0.0.1 secret")
    assert sign("/s/link", 2147483647, "secret", DEFAULT_EXPRESSION, client_ip="127.0.0.1") == {
        "md5": expected, "expires": "2147483647"}
    assert expected == "_e4Nc3iduzkWRm01TBBNYw"  # the documentation's link


def test_uri_is_the_decoded_path():
    params = sign("/v/a%20b/x%2Bc.ts", EXPIRES, SECRET, DEFAULT_EXPRESSION, client_ip=IP)
    expected = md5_b64(f"{EXPIRES}/v/a b/x+c.ts{IP} ".encode() + SECRET)
    assert params["md5"] == expected
    assert isinstance(verify(request("/v/a%20b/x%2Bc.ts", link(params)), RING,
                             expression=DEFAULT_EXPRESSION), Grant)


def test_host_header_and_argument_variables():
    expr = "$host|$http_x_viewer|$arg_sid|$secret"
    params = sign("/v/a.ts", EXPIRES, SECRET, expr, host="Media.Example.COM:8443",
                  headers={"X-Viewer": "ann"}, args={"sid": "42"})
    # nginx's $host: lowercased, no port; $arg_sid raw; the header by its name.
    assert params["md5"] == md5_b64(b"media.example.com|ann|42|" + SECRET)
    query = link(params, sid="42")
    headers = {"host": "media.example.com.", "x-viewer": "ann"}
    assert isinstance(verify(request("/v/a.ts", query, headers=headers), RING, expression=expr),
                      Grant)
    for changed in ({"host": "other.example.com", "x-viewer": "ann"},
                    {"host": "media.example.com"}):
        assert verify(request("/v/a.ts", query, headers=changed), RING,
                      expression=expr) == Refusal("bad-signature")
    assert verify(request("/v/a.ts", link(params, sid="43"), headers=headers), RING,
                  expression=expr) == Refusal("bad-signature")


def test_query_arg_is_nginx_arg():
    assert query_arg("a=1&md5=x&md5=y", "md5") == "x"          # the first
    assert query_arg("xmd5=1&MD5=2", "md5") == "2"             # whole names, any case
    assert query_arg("md5&md5=3", "md5") == "3"                # a name needs its "="
    assert query_arg("md5=a%3Db", "md5") == "a%3Db"            # raw, not decoded
    assert query_arg("md5=", "md5") == ""
    assert query_arg("", "md5") is None
    assert query_arg("md5x=1", "md5") is None


# -- nginx's edge cases --------------------------------------------------------------------


def good(path: str = "/v/a/seg1.ts", expires: int = EXPIRES, ip: str = IP) -> dict[str, str]:
    return sign(path, expires, SECRET, DEFAULT_EXPRESSION, client_ip=ip)


def check(query: str, *, path: str = "/v/a/seg1.ts", now: float = NOW, skew: float = 0.0,
          ring: KeyRing = RING, **options: object) -> Grant | Refusal:
    return verify(request(path, query, now=now), ring, expression=DEFAULT_EXPRESSION,
                  clock_skew=skew, **options)  # type: ignore[arg-type]


def test_good_link_grants_until_its_expiry_and_carries_nothing():
    assert check(link(good())) == Grant(float(EXPIRES), ())


@pytest.mark.parametrize(("now", "skew", "verdict"), [
    (EXPIRES, 0.0, "grant"),             # nginx: expires < ngx_time() → "0"; equal is good
    (EXPIRES + 0.999, 0.0, "grant"),     # ngx_time() is whole seconds
    (EXPIRES + 1, 0.0, "expired"),
    (EXPIRES + 30.5, 30.0, "grant"),
    (EXPIRES + 31, 30.0, "expired"),
])
def test_expiry_comparison_is_nginx_s(now, skew, verdict):
    result = check(link(good()), now=now, skew=skew)
    assert (result == Refusal("expired")) if verdict == "expired" else isinstance(result, Grant)


def test_padding_and_what_follows_it():
    digest = good()["md5"]
    assert len(digest) == 22
    for suffix in ("=", "==", "=x", "=%"):  # decoding stops at "=", up to 24 bytes in all
        assert isinstance(check(link(good(), md5=digest + suffix)), Grant), suffix
    for text in (digest + "===",             # 25 bytes
                 digest + "A",               # 17 bytes
                 digest[:-1],                # 21 characters
                 digest[:-1] + "=",          # 21 before the "="
                 digest + "%3D%3D"):         # escapes are not decoded
        assert check(link(good(), md5=text)) == Refusal("malformed"), text


def test_standard_base64_alphabet_is_refused():
    # find a link whose hash has a "-" or "_", then send it with "+" or "/"
    for n in range(200):
        digest = good(path=f"/v/a/seg{n}.ts")["md5"]
        if "-" in digest or "_" in digest:
            break
    standard = digest.replace("-", "+").replace("_", "/")
    assert check(link(good(path=f"/v/a/seg{n}.ts"), md5=standard),
                 path=f"/v/a/seg{n}.ts") == Refusal("malformed")


def test_last_character_low_bits_are_not_read():
    digest = good()["md5"]
    index = B64URL.index(digest[-1])
    same = [c for c in B64URL if B64URL.index(c) >> 4 == index >> 4]
    assert len(same) == 16
    for char in same:  # nginx decodes all 16 to the same bytes: the same signature
        assert decode_hash(digest[:-1] + char) == decode_hash(digest)
        assert isinstance(check(link(good(), md5=digest[:-1] + char)), Grant)


@pytest.mark.parametrize(("query", "reason"), [
    ("", "missing"),
    ("expires=2000000000", "missing"),
    ("md5=&expires=2000000000", "missing"),
    ("md5", "missing"),
])
def test_missing_hash(query, reason):
    assert check(query) == Refusal(reason)


@pytest.mark.parametrize("expires", [None, "", "0", "-5", "+5", "5x", "0x10", "1e9", " 5",
                                     "99999999999999999999", "١٢٣"])
def test_absent_or_bad_expiry_is_malformed(expires):
    digest = good()["md5"]
    query = f"md5={digest}" if expires is None else f"md5={digest}&expires={expires}"
    assert check(query) == Refusal("malformed")


def test_expiry_text_is_hashed_as_sent():
    # leading zeros: nginx hashes $secure_link_expires as sent, so "02000000000" is another link
    digest = good()["md5"]
    assert check(f"md5={digest}&expires=0{EXPIRES}") == Refusal("bad-signature")
    zeros = md5_b64(f"0{EXPIRES}/v/a/seg1.ts{IP} ".encode() + SECRET)
    assert isinstance(check(f"md5={zeros}&expires=0{EXPIRES}"), Grant)


def test_a_comma_in_the_hash_splits_the_link():
    digest = good()["md5"]
    assert check(f"md5={digest},{EXPIRES}&expires={EXPIRES}") == Refusal("malformed")
    # without an expires argument (secure_link $arg_md5;) the hash may carry one itself
    assert isinstance(check(f"md5={digest},{EXPIRES}", expires_arg=None), Grant)


def test_links_without_expiry():
    expr = "$uri $secret"
    params = sign("/v/a.ts", None, SECRET, expr, expires_arg=None)
    assert params == {"md5": md5_b64(b"/v/a.ts " + SECRET)}
    verdict = verify(request("/v/a.ts", link(params)), RING, expression=expr, expires_arg=None)
    assert verdict == Grant(math.inf)
    # with an expires argument expected, the same link is refused as nginx does
    assert verify(request("/v/a.ts", link(params)), RING,
                  expression=expr) == Refusal("malformed")
    with pytest.raises(ValueError):
        sign("/v/a.ts", None, SECRET, expr)


def test_custom_argument_names():
    expr = "${secure_link_expires}$secret$uri"
    params = sign("/v/a.ts", EXPIRES, SECRET, expr, hash_arg="st", expires_arg="e")
    assert set(params) == {"st", "e"}
    assert isinstance(verify(request("/v/a.ts", link(params)), RING, expression=expr,
                             hash_arg="st", expires_arg="e"), Grant)


def test_wrong_hash_beats_expired():
    # nginx compares the hash first: an expired link with a bad hash is "" not "0"
    params = good(expires=1000)
    assert check(link(params)) == Refusal("expired")
    tampered = dict(params, md5=md5_b64(b"x"))
    assert check(link(tampered)) == Refusal("bad-signature")


def test_rings_empty_rotated_retired():
    params = good()
    assert check(link(params), ring=KeyRing({})) == Refusal("unknown-key")
    rotating = KeyRing({"old": SECRET, "new": b"next"}, "new")
    assert isinstance(check(link(params), ring=rotating), Grant)
    assert check(link(params), ring=KeyRing({"new": b"next"}, "new")) == Refusal("bad-signature")


def test_sign_refuses_out_of_range_expiry():
    for expires in (0, -1, 2**63):
        with pytest.raises(ValueError):
            sign("/a", expires, SECRET, DEFAULT_EXPRESSION)


# -- properties ----------------------------------------------------------------------------

CASES = 1_200  # per property; 9 properties → 10,800 generated cases for this format

_PATH_CHARS = string.ascii_letters + string.digits + "-_.~/"


def _path(data: bytes) -> str:
    """A canonical path from bytes (one cheap draw instead of a list of texts)."""
    text = "".join(_PATH_CHARS[b % len(_PATH_CHARS)] for b in data)
    segments = [s for s in text.split("/") if s not in ("", ".", "..")]
    return "/" + "/".join(segments or ["x"])


paths = st.binary(min_size=1, max_size=40).map(_path)
ips = st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: str(IPv4Address(n)))
secrets = st.binary(min_size=1, max_size=24)
property_settings = settings(max_examples=CASES, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def _scene(draw: tuple) -> dict:
    """A link signed with one secret of a ring of one to three (the others derived from it),
    and a time it is valid at (a fraction of the way to its expiry plus the skew)."""
    secret, others, position, expires, skew, fraction, path, ip = draw
    ring_secrets = [hashlib.sha256(secret + bytes([i])).digest()[:len(secret)]
                    for i in range(others)]
    ring_secrets.insert(min(position, others), secret)
    params = sign(path, expires, secret, DEFAULT_EXPRESSION, client_ip=ip)
    ring = KeyRing({f"k{i}": s for i, s in enumerate(ring_secrets)})
    return {"ring": ring, "secret": secret, "expires": expires, "skew": skew,
            "now": fraction * (expires + skew), "path": path, "ip": ip, "params": params,
            "secrets": ring_secrets}


scenes = st.tuples(secrets, st.integers(0, 2), st.integers(0, 2),
                   st.integers(min_value=1, max_value=2**40),
                   st.sampled_from([0.0, 1.0, 30.0, 300.0]), st.floats(0.0, 1.0), paths,
                   ips).map(_scene)


def run(scene: dict, *, params: dict[str, str] | None = None, path: str | None = None,
        ip: str | None = None, now: float | None = None,
        ring: KeyRing | None = None) -> Grant | Refusal:
    query = link(params if params is not None else scene["params"])
    return verify(TokenRequest(path=path or scene["path"], query=query,
                               client_ip=ip or scene["ip"],
                               now=scene["now"] if now is None else now),
                  ring or scene["ring"], expression=DEFAULT_EXPRESSION,
                  clock_skew=scene["skew"])


@property_settings
@given(scenes)
def test_property_valid_links_always_grant(scene):
    assert run(scene) == Grant(float(scene["expires"]))


@property_settings
@given(scenes, st.binary(min_size=22, max_size=22).map(
    lambda data: "".join(B64URL[b % 64] for b in data)))
def test_property_forged_hashes_never_grant(scene, forged):
    assume(decode_hash(forged) != decode_hash(scene["params"]["md5"]))
    assert run(scene, params=dict(scene["params"], md5=forged)) == Refusal("bad-signature")


@property_settings
@given(scenes, st.integers(min_value=0, max_value=21))
def test_property_truncated_hashes_never_grant(scene, keep):
    params = dict(scene["params"], md5=scene["params"]["md5"][:keep])
    assert run(scene, params=params) == Refusal("missing" if keep == 0 else "malformed")


@property_settings
@given(scenes, st.integers(min_value=0, max_value=21))
def test_property_case_changed_hashes_never_grant(scene, pick):
    digest = scene["params"]["md5"]
    letters = [i for i, c in enumerate(digest) if c.isalpha()]
    assume(letters)
    i = letters[pick % len(letters)]
    changed = digest[:i] + digest[i].swapcase() + digest[i + 1:]
    assert run(scene, params=dict(scene["params"], md5=changed)) == Refusal("bad-signature")


@property_settings
@given(scenes, st.floats(min_value=1.0, max_value=1e9))
def test_property_expired_links_never_grant(scene, late):
    now = scene["expires"] + scene["skew"] + late
    assert run(scene, now=now) == Refusal("expired")


@property_settings
@given(scenes, paths)
def test_property_links_replayed_on_another_path_never_grant(scene, other):
    assume(other != scene["path"])
    assert run(scene, path=other) == Refusal("bad-signature")


@property_settings
@given(scenes, ips)
def test_property_links_from_another_address_never_grant(scene, other):
    assume(other != scene["ip"])
    assert run(scene, ip=other) == Refusal("bad-signature")


@property_settings
@given(scenes, st.integers(min_value=1, max_value=2**40))
def test_property_tampered_expiry_never_grants(scene, other):
    assume(other != scene["expires"])
    params = dict(scene["params"], expires=str(other))
    verdict = run(scene, params=params, now=0.0)
    assert verdict == Refusal("bad-signature")


@property_settings
@given(scenes, secrets, st.booleans())
def test_property_other_and_retired_keys_never_grant(scene, other, retire):
    if retire:
        # during a rotation both secrets are good; once the link's secret is dropped, not
        assert isinstance(run(scene), Grant)
        kept = {f"k{i}": s for i, s in enumerate(scene["secrets"]) if s != scene["secret"]}
        assert run(scene, ring=KeyRing(kept)) == Refusal("bad-signature" if kept
                                                         else "unknown-key")
    else:
        assume(other not in scene["secrets"])
        params = sign(scene["path"], scene["expires"], other, DEFAULT_EXPRESSION,
                      client_ip=scene["ip"])
        assert run(scene, params=params) == Refusal("bad-signature")


# -- against nginx itself ------------------------------------------------------------------

NGINX = "/usr/sbin/nginx"
NGINX_SECRET = "s3cr3t"
# location → (secure_link, secure_link_md5 in nginx, our expression and options)
LOCATIONS = {
    "/a/": ("$arg_md5,$arg_expires", f"$secure_link_expires$uri$remote_addr {NGINX_SECRET}",
            {"expression": DEFAULT_EXPRESSION}),
    "/b/": ("$arg_md5", f"$uri|$host|$http_x_viewer|$arg_sid|{NGINX_SECRET}",
            {"expression": "$uri|$host|$http_x_viewer|$arg_sid|$secret", "expires_arg": None}),
    "/c/": ("$arg_st,$arg_e", f"${{secure_link_expires}}{NGINX_SECRET}$uri",
            {"expression": "${secure_link_expires}$secret$uri", "hash_arg": "st",
             "expires_arg": "e"}),
}


def nginx_config(prefix: Path, port: int) -> str:
    locations = "".join(f"""
        location {where} {{
            secure_link {link};
            secure_link_md5 "{md5}";
            if ($secure_link = "") {{ return 403 "bad"; }}
            if ($secure_link = "0") {{ return 403 "expired"; }}
            return 200 "ok";
        }}""" for where, (link, md5, _) in LOCATIONS.items())
    temp = "".join(f"    {name}_temp_path {prefix}/{name};\n"
                   for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        {locations}
        location / {{ return 404; }}
    }}
}}
"""



def ask_nginx(port: int, target: str, *, source: str, headers: dict[str, str]) -> str:
    """nginx's verdict on one request: "1" (200), "0" (expired) or "" (refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as sock:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"GET {target} HTTP/1.1\r\n{fields}Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b" ", 2)[1]
    body = answer.partition(b"\r\n\r\n")[2]
    if status == b"200" and body == b"ok":
        return "1"
    assert status == b"403", answer
    return {b"expired": "0", b"bad": ""}[body]


def ask_reelcdn(target: str, *, source: str, headers: dict[str, str], now: float) -> str:
    raw_path, _, query = target.partition("?")
    location = next(where for where in LOCATIONS if raw_path.startswith(where))
    options = LOCATIONS[location][2]
    verdict = verify(TokenRequest(path=canonical_path(raw_path), query=query,
                                  headers={k.lower(): v for k, v in headers.items()},
                                  client_ip=source, now=now),
                     KeyRing({"k": NGINX_SECRET.encode()}), **options)  # type: ignore[arg-type]
    if isinstance(verdict, Grant):
        return "1"
    return "0" if verdict.reason == "expired" else ""


def cases(now: int) -> list[tuple[str, str, dict[str, str]]]:
    """(target, source address, header fields): a few hundred links, good and bad."""
    rng = random.Random(20240611)
    secret = NGINX_SECRET
    out: list[tuple[str, str, dict[str, str]]] = []
    host = {"Host": "media.example"}
    names = ["seg1.ts", "index.m3u8", "a%20b.ts", "%41%42.ts", "x%2Fy.ts", "x%2By.ts",
             "dir//seg.ts", "dir/./seg.ts", "init.mp4", "~x-y_z.m4s"]

    def a_path() -> str:
        return f"/a/v{rng.randrange(1000)}/{rng.choice(names)}"

    def signed(path: str, expires: int, ip: str, key: str = secret, text: str | None = None
               ) -> dict[str, str]:
        if text is not None:  # the expiry spelt another way, hashed as spelt
            return {"md5": md5_b64(f"{text}{_uri(path)}{ip} {key}".encode()), "expires": text}
        return sign(canonical_path(path), expires, key, DEFAULT_EXPRESSION, client_ip=ip)

    for _ in range(40):  # good ones, from either address
        path, ip = a_path(), rng.choice(["127.0.0.1", "127.0.0.2"])
        out.append((f"{path}?{link(signed(path, now + rng.randrange(60, 10**6), ip))}", ip, host))
    for _ in range(30):  # one character of the hash changed (the last one included)
        path = a_path()
        params = signed(path, now + 3600, "127.0.0.1")
        i = rng.choice([rng.randrange(22), 21])
        alphabet = string.ascii_letters + string.digits + "-_"
        params["md5"] = params["md5"][:i] + rng.choice(alphabet) + params["md5"][i + 1:]
        out.append((f"{path}?{link(params)}", "127.0.0.1", host))
    for _ in range(25):  # expired, good hash and bad hash
        path = a_path()
        params = signed(path, now - rng.randrange(5, 10**6), "127.0.0.1")
        out.append((f"{path}?{link(params)}", "127.0.0.1", host))
        out.append((f"{path}?{link(dict(params, md5=md5_b64(b'x')))}", "127.0.0.1", host))
    for _ in range(20):  # another secret, another path, another address, tampered expiry
        path = a_path()
        out.append((f"{path}?{link(signed(path, now + 600, '127.0.0.1', 'other'))}",
                    "127.0.0.1", host))
        params = signed(path, now + 600, "127.0.0.1")
        out.append((f"{a_path()}?{link(params)}", "127.0.0.1", host))
        out.append((f"{path}?{link(params)}", "127.0.0.2", host))
        out.append((f"{path}?{link(dict(params, expires=str(now + 6000)))}", "127.0.0.1", host))
    path = "/a/v1/seg1.ts"
    params = signed(path, now + 600, "127.0.0.1")
    digest, expires = params["md5"], params["expires"]
    spellings = [  # the hash and the expiry, spelt every way nginx reads one way or another
        f"md5={digest}==&expires={expires}", f"md5={digest}=&expires={expires}",
        f"md5={digest}=x&expires={expires}", f"md5={digest}===&expires={expires}",
        f"md5={digest}%3D%3D&expires={expires}", f"md5={digest}A&expires={expires}",
        f"md5={digest[:-1]}&expires={expires}", f"md5={digest[:-1]}=&expires={expires}",
        f"md5={digest.upper()}&expires={expires}", f"md5={digest.lower()}&expires={expires}",
        f"md5={digest.replace('-', '+').replace('_', '/')}&expires={expires}",
        f"md5={digest}", f"md5={digest}&expires=", f"md5={digest}&expires=0",
        f"md5={digest}&expires=-{expires}", f"md5={digest}&expires=%2B{expires}",
        f"md5={digest}&expires={expires}x", f"md5={digest}&expires=99999999999999999999",
        f"md5={digest}&expires=0{expires}", f"expires={expires}", f"md5=&expires={expires}",
        f"md5&expires={expires}", "", f"MD5={digest}&EXPIRES={expires}",
        f"md5={digest}&expires={expires}&md5=AAAA", f"md5=AAAA&md5={digest}&expires={expires}",
        f"xmd5=1&md5={digest}&expires={expires}", f"md5={digest},{expires}&expires={expires}",
        f"md5={digest},{expires}", f"expires={expires}&md5={digest}",
    ]
    for spelling in spellings:
        out.append((f"{path}?{spelling}", "127.0.0.1", host))
    for char in string.ascii_letters + string.digits + "-_":  # every last character
        out.append((f"{path}?md5={digest[:-1]}{char}&expires={expires}", "127.0.0.1", host))
    zeros = signed(path, 0, "127.0.0.1", text=f"000{now + 600}")
    out.append((f"{path}?{link(zeros)}", "127.0.0.1", host))

    # /b/: no expiry; $host, $http_x_viewer and $arg_sid in the hash
    def b_link(path: str, host: str, viewer: str, sid: str) -> str:
        return sign(canonical_path(path), None, secret, LOCATIONS["/b/"][2]["expression"],
                    host=host, headers={"x-viewer": viewer}, args={"sid": sid},
                    expires_arg=None)["md5"]

    for _ in range(15):
        path = f"/b/v{rng.randrange(1000)}/{rng.choice(names)}"
        digest = b_link(path, "media.example", "ann", "7")
        good_fields = {"Host": "Media.Example:8080", "X-Viewer": "ann"}
        out.append((f"{path}?md5={digest}&sid=7", "127.0.0.1", good_fields))
        out.append((f"{path}?md5={digest}&sid=8", "127.0.0.1", good_fields))
        out.append((f"{path}?sid=7&md5={digest}", "127.0.0.2", good_fields))
        out.append((f"{path}?md5={digest}&sid=7", "127.0.0.1",
                    {"Host": "other.example", "X-Viewer": "ann"}))
        out.append((f"{path}?md5={digest}&sid=7", "127.0.0.1", {"Host": "media.example"}))
        out.append((f"{path}?md5={digest}&sid=7&expires=1", "127.0.0.1", good_fields))
        out.append((f"{path}?md5={digest},5&sid=7", "127.0.0.1", good_fields))
        out.append((f"{path}?md5={digest},&sid=7", "127.0.0.1", good_fields))
    nobody = b_link("/b/x.ts", "media.example", "", "")
    out.append((f"/b/x.ts?md5={nobody}", "127.0.0.1", host))

    # /c/: other argument names, braces, the secret in the middle
    for _ in range(15):
        path = f"/c/v{rng.randrange(1000)}/{rng.choice(names)}"
        options = LOCATIONS["/c/"][2]
        later = now + rng.randrange(60, 10**5)
        params = sign(canonical_path(path), later, secret, options["expression"],
                      hash_arg="st", expires_arg="e")
        out.append((f"{path}?{link(params)}", "127.0.0.1", host))
        out.append((f"{path}?md5={params['st']}&expires={later}", "127.0.0.1", host))
        out.append((f"{path}?{link(dict(params, e=str(now - 100)))}", "127.0.0.1", host))
        stale = sign(canonical_path(path), now - 100, secret, options["expression"],
                     hash_arg="st", expires_arg="e")
        out.append((f"{path}?{link(stale)}", "127.0.0.1", host))
    return out


def _uri(path: str) -> str:
    from urllib.parse import unquote

    return unquote(canonical_path(path))


def nginx_or_skip() -> None:
    if Path(NGINX).exists():
        return
    reason = f"{NGINX} is not installed (scripts/test.sh installs Debian's nginx)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; in CI the nginx cross-check must run")
    pytest.skip(reason)


@pytest.mark.slow
def test_nginx_and_reelcdn_agree_on_every_link(tmp_path):
    nginx_or_skip()
    port = free_port()
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / name).mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(tmp_path, port))
    process = subprocess.Popen([NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                                "-c", str(conf), "-g", "daemon off;"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        now = int(time.time())
        links = cases(now)
        assert len(links) >= 300
        disagreements = []
        seen = {"1": 0, "0": 0, "": 0}
        for target, source, headers in links:
            theirs = ask_nginx(port, target, source=source, headers=headers)
            ours = ask_reelcdn(target, source=source, headers=headers, now=time.time())
            seen[theirs] += 1
            if theirs != ours:
                disagreements.append((target, source, headers, theirs, ours))
        assert not disagreements, disagreements
        assert min(seen.values()) >= 30, seen  # each verdict asked about many times
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
    errors = (tmp_path / "error.log").read_text()
    assert "[emerg]" not in errors and "[crit]" not in errors, errors

