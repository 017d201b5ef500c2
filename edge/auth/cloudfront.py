"""Amazon CloudFront signed URLs and signed cookies, verified as CloudFront does.

A CloudFront token is a JSON *policy statement*, signed with RSA (PKCS #1 v1.5) over SHA-1 by
the private key of a key pair whose id names the public key (``Key-Pair-Id``):

- **canned policy**: the policy is not sent; the viewer sends ``Expires`` and the verifier
  rebuilds the exact policy the signer signed (``botocore.signers.CloudFrontSigner``,
  CloudFront's documentation)::

      {"Statement":[{"Resource":"<URL>","Condition":{"DateLessThan":{"AWS:EpochTime":<Expires>}}}]}

  no whitespace, keys in that order, the URL as a JSON string. It signs one URL exactly.
- **custom policy**: the policy itself is sent (``Policy``), base64 in CloudFront's URL-safe
  variant; one statement whose ``Resource`` may hold wildcards (``*`` any characters, none
  included; ``?`` exactly one), a required ``DateLessThan``, an optional ``DateGreaterThan``
  and an optional ``IpAddress`` (``AWS:SourceIp``, one address or CIDR range).

Where the token rides:

- **signed URL**: query parameters ``Expires`` (canned) or ``Policy`` (custom), ``Signature``,
  ``Key-Pair-Id`` (and optionally ``Hash-Algorithm``), appended by the signer after the URL's
  own parameters (``?`` or ``&``, whichever the URL needs);
- **signed cookies**: ``CloudFront-Expires`` (canned) or ``CloudFront-Policy`` (custom),
  ``CloudFront-Signature``, ``CloudFront-Key-Pair-Id`` (optionally
  ``CloudFront-Hash-Algorithm``).

As on CloudFront a signed URL takes precedence over signed cookies: when the query carries any
of the URL parameters, the verdict is the URL's alone (the default ``sources`` order).

The URL a policy is about (what a canned policy signs, what a custom ``Resource`` is matched
against) is rebuilt from the request::

    {scheme}://{host}{path}[?{the query without the CloudFront parameters}]

- ``scheme``: the listener's (an option of :func:`verify`, the node knows it, the request
  does not);
- ``host``: the ``Host`` field as the client sent it (a port included): a client sends the
  host of the URL it was given, and the signer signed that URL's spelling;
- ``path``: the request's canonical path (:class:`TokenRequest`), which for any URL a signer
  writes in canonical form (no escaped unreserved character, no ``%2F``, no dot segment or
  ``//``: every URL of a video) is the path as sent. A URL signed in another spelling fails
  closed (``bad-signature`` or ``acl``), and what is checked is what is served;
- the query: the request's raw query split on ``&``, the pieces named ``Expires``,
  ``Policy``, ``Signature``, ``Key-Pair-Id`` or ``Hash-Algorithm`` taken out wherever they
  are (CloudFront's documentation puts the viewer's own parameters before them, "in certain
  rare circumstances" after ``Key-Pair-Id``), the others kept byte for byte in their order and
  joined with ``&``; no ``?`` when none is left. This is exactly the URL botocore was given:
  it only ever appends ``[?&]Expires|Policy=…&Signature=…&Key-Pair-Id=…``.

Parameter and cookie names are case-sensitive, and a CloudFront parameter given twice is
``malformed``. Before the signature is checked, only the key id and the encodings are read; a
custom policy's JSON is parsed only once its signature verifies. The base64 forms must be
canonical (a second spelling of the same bytes is refused), so a changed character never
verifies. Pure functions: no I/O, no clock; the loaded public keys are cached per PEM.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from reelcdn.edge.auth.verdict import Grant, KeyRing, Refusal, TokenRequest

__all__ = [
    "COOKIE_NAMES",
    "QUERY_PARAMS",
    "canned_policy",
    "load_public_key",
    "policy_url",
    "resource_matches",
    "verify",
]

QUERY_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")
COOKIE_NAMES = tuple("CloudFront-" + name for name in QUERY_PARAMS)
SOURCES = ("query", "cookie")

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256}
_EXPIRES = re.compile(r"[0-9]{1,12}")
# CloudFront's base64: "+" → "-", "=" → "_", "/" → "~"; padding only at the end.
_CF_B64 = re.compile(r"[A-Za-z0-9~-]*_{0,2}")
_FROM_CF = str.maketrans("-_~", "+=/")
_MAX_POLICY = 8192  # characters of a Policy value; CloudFront's own URL limit is 8 KiB
_KEY_CACHE_SIZE = 64

_MALFORMED = Refusal("malformed")
_MISSING = Refusal("missing")


# --- keys ---------------------------------------------------------------------------------

_keys: dict[bytes, rsa.RSAPublicKey | None] = {}


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """The RSA public key of a PEM (``SubjectPublicKeyInfo`` or PKCS #1); :class:`ValueError`
    if it is not one. For the configuration loader, to refuse a bad key at load time."""
    data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("CloudFront keys are RSA public keys")
    return key


def _public_key(pem: bytes | str) -> rsa.RSAPublicKey | None:
    """The loaded key of a ring entry, cached per PEM (loading costs more than a verify);
    None for an entry that is not an RSA public key (the node holds no usable key)."""
    data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem)
    try:
        return _keys[data]
    except KeyError:
        pass
    try:
        key: rsa.RSAPublicKey | None = load_public_key(data)
    except ValueError:
        key = None
    if len(_keys) >= _KEY_CACHE_SIZE:  # rings are small; a reload may retire them all
        _keys.clear()
    _keys[data] = key
    return key


# --- encodings and policies ---------------------------------------------------------------

def _cf_b64decode(text: str) -> bytes | None:
    """The bytes of a value in CloudFront's base64, or None unless it is the one canonical
    spelling of them (padded, no stray bits)."""
    if not text or not _CF_B64.fullmatch(text) or len(text) % 4:
        return None
    standard = text.translate(_FROM_CF)
    try:
        raw = base64.b64decode(standard, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != standard:
        return None
    return raw


def canned_policy(resource: str, expires: str | int) -> bytes:
    """The canned policy statement for ``resource`` until ``expires``, byte for byte as
    botocore's ``CloudFrontSigner.build_policy`` writes it (and CloudFront's documentation
    prescribes: no whitespace, this key order)."""
    return (
        '{"Statement":[{"Resource":' + json.dumps(resource)
        + ',"Condition":{"DateLessThan":{"AWS:EpochTime":' + str(expires) + "}}}]}"
    ).encode("utf-8")


def policy_url(scheme: str, host: str, path: str, others: Sequence[str]) -> str:
    """The URL a policy is about: the request's URL without the CloudFront parameters."""
    url = f"{scheme}://{host}{path}"
    if others:
        url += "?" + "&".join(others)
    return url


@functools.lru_cache(maxsize=1024)
def _resource_pattern(resource: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in resource),
        re.DOTALL,
    )


def resource_matches(resource: str, url: str) -> bool:
    """CloudFront's ``Resource`` match: the whole URL, ``*`` any characters (none included),
    ``?`` exactly one, everything else literally (case-sensitive)."""
    if "*" not in resource and "?" not in resource:
        return resource == url
    return _resource_pattern(resource).fullmatch(url) is not None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"{name!r} twice")
        result[name] = value
    return result


def _epoch(value: Any) -> int | None:
    """``{"AWS:EpochTime": <integer>}`` → the integer."""
    if not isinstance(value, dict) or set(value) != {"AWS:EpochTime"}:
        return None
    moment = value["AWS:EpochTime"]
    if isinstance(moment, bool) or not isinstance(moment, int) or moment < 0:
        return None
    return moment


class _Custom:
    """A custom policy's statement, parsed (only after its signature verified)."""

    __slots__ = ("date_greater_than", "date_less_than", "network", "resource")

    def __init__(self, resource: str | None, date_less_than: int, date_greater_than: int | None,
                 network: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> None:
        self.resource = resource
        self.date_less_than = date_less_than
        self.date_greater_than = date_greater_than
        self.network = network


def _parse_custom(policy: bytes) -> _Custom | None:
    """The one statement of a custom policy, or None if it is not one CloudFront accepts:
    JSON of ``{"Statement": [ {"Resource": str, "Condition": {...}} ]}``, exactly one
    statement, ``DateLessThan`` required. A name this verifier does not know is refused rather
    than ignored (an ignored condition would grant more than was signed)."""
    try:
        document = json.loads(policy.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or set(document) != {"Statement"}:
        return None
    statements = document["Statement"]
    if not isinstance(statements, list) or len(statements) != 1:
        return None
    statement = statements[0]
    if not isinstance(statement, dict) or "Condition" not in statement \
            or not set(statement) <= {"Resource", "Condition"}:
        return None
    resource = statement.get("Resource")
    if resource is not None and not isinstance(resource, str):
        return None
    condition = statement["Condition"]
    if not isinstance(condition, dict) or "DateLessThan" not in condition \
            or not set(condition) <= {"DateLessThan", "DateGreaterThan", "IpAddress"}:
        return None
    date_less_than = _epoch(condition["DateLessThan"])
    if date_less_than is None:
        return None
    date_greater_than = None
    if "DateGreaterThan" in condition:
        date_greater_than = _epoch(condition["DateGreaterThan"])
        if date_greater_than is None:
            return None
    network = None
    if "IpAddress" in condition:
        address = condition["IpAddress"]
        if not isinstance(address, dict) or set(address) != {"AWS:SourceIp"} \
                or not isinstance(address["AWS:SourceIp"], str):
            return None
        try:
            network = ipaddress.ip_network(address["AWS:SourceIp"], strict=False)
        except ValueError:
            return None
    return _Custom(resource, date_less_than, date_greater_than, network)


def _client_in(network: ipaddress.IPv4Network | ipaddress.IPv6Network, client_ip: str) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener's IPv4 client
    return address.version == network.version and address in network


# --- the verdict --------------------------------------------------------------------------

def _check(
    fields: Mapping[str, str],
    url: str,
    request: TokenRequest,
    ring: KeyRing,
    clock_skew: float,
    carried: tuple[tuple[str, str], ...],
) -> Grant | Refusal:
    """The verdict on one token, given as CloudFront parameter names → values (the URL's
    names; cookies are mapped to them), for the policy URL ``url``."""
    expires, encoded_policy = fields.get("Expires"), fields.get("Policy")
    signature_text, kid = fields.get("Signature"), fields.get("Key-Pair-Id")
    if (expires is None) == (encoded_policy is None) or not signature_text or not kid:
        return _MALFORMED
    algorithm = _HASHES.get(fields.get("Hash-Algorithm", "SHA1"))
    if algorithm is None:
        return _MALFORMED
    signature = _cf_b64decode(signature_text)
    if signature is None:
        return _MALFORMED
    if expires is not None:
        if not _EXPIRES.fullmatch(expires):
            return _MALFORMED
        policy = canned_policy(url, expires)
    else:
        assert encoded_policy is not None
        decoded = (_cf_b64decode(encoded_policy) if len(encoded_policy) <= _MAX_POLICY
                   else None)
        if decoded is None:
            return _MALFORMED
        policy = decoded
    pem = ring.get(kid)
    if pem is None:
        return Refusal("unknown-key")
    key = _public_key(pem)
    if key is None:
        return Refusal("unknown-key")
    try:
        key.verify(signature, policy, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        return Refusal("bad-signature")

    now = request.now
    if expires is not None:  # canned: the signature covered the URL and the time
        if int(expires) <= now - clock_skew:
            return Refusal("expired")
        return Grant(expires=float(int(expires)), carried=())

    custom = _parse_custom(policy)
    if custom is None:
        return _MALFORMED
    if custom.date_less_than <= now - clock_skew:
        return Refusal("expired")
    if custom.date_greater_than is not None and custom.date_greater_than >= now + clock_skew:
        return Refusal("not-yet-valid")
    # No Resource: CloudFront grants every object the key pair may sign for (documented).
    if custom.resource is not None and not resource_matches(custom.resource, url):
        return Refusal("acl")
    if custom.network is not None and not _client_in(custom.network, request.client_ip):
        return Refusal("ip")
    return Grant(expires=float(custom.date_less_than), carried=carried)


def _split_query(query: str) -> tuple[dict[str, str], list[str], bool]:
    """The CloudFront parameters of a raw query, the other pieces in their order, and whether
    a CloudFront parameter was given twice."""
    fields: dict[str, str] = {}
    others: list[str] = []
    twice = False
    if not query:
        return fields, others, twice
    for piece in query.split("&"):
        name, _, value = piece.partition("=")
        if name in QUERY_PARAMS:
            twice = twice or name in fields
            fields[name] = value
        else:
            others.append(piece)
    return fields, others, twice


def verify(
    request: TokenRequest,
    ring: KeyRing,
    *,
    clock_skew: float = 0.0,
    scheme: str = "https",
    sources: tuple[str, ...] = SOURCES,
) -> Grant | Refusal:
    """The verdict on a request's CloudFront signed URL or signed cookies.

    ``sources`` are looked at in order and the first that carries any CloudFront name decides
    (the default, query then cookie, is CloudFront's precedence). ``scheme`` is the scheme of
    the listener the request came in on. A grant of a custom policy carried in the query
    carries its ``Policy``, ``Signature``, ``Key-Pair-Id`` (and ``Hash-Algorithm``) parameters
    as sent, so rendered playlists can copy them to the other URIs the policy covers; a canned
    policy signs one URL (its path and query) and cookies need no copying: their grants carry
    nothing."""
    for source in sources:
        if source not in SOURCES:
            raise ValueError(f"unknown token source {source!r}; expected one of {SOURCES}")
    fields, others, twice = _split_query(request.query)
    url = policy_url(scheme, request.headers.get("host", ""), request.path, others)
    for source in sources:
        if source == "query":
            if not fields:
                continue
            if twice:
                return _MALFORMED
            carried: tuple[tuple[str, str], ...] = ()
            if "Policy" in fields:
                carried = tuple((name, fields[name]) for name in QUERY_PARAMS[1:]
                                if name in fields)
            return _check(fields, url, request, ring, clock_skew, carried)
        cookies = request.cookies
        from_cookies = {name: cookies[cookie] for name, cookie in zip(QUERY_PARAMS, COOKIE_NAMES,
                                                                       strict=True)
                        if cookie in cookies}
        if from_cookies:
            return _check(from_cookies, url, request, ring, clock_skew, ())
    return _MISSING
