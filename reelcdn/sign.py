"""``reelcdn sign URL``: a signed URL (or cookie) for the keys of a node of a topology.

The node's ``[tokens]`` says the format and the keys; the token grants ``--acl`` (default:
the whole video the URL is in, ``/v/{id}/``, so one token covers its master, playlists and
segments) until ``--ttl`` from now, optionally bound to ``--ip`` (an address or a prefix).
CloudFront tokens are signed with the private key of the key pair (``--private-key``), which
the node never holds: it verifies with the public key.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from reelcdn.edge.config.model import NodeConfig, TokenConfig

__all__ = ["SignRequest", "Signed", "default_acl", "sign_url", "tokens_of"]

_VIDEO = re.compile(r"^(/v/[^/]+/)")


@dataclass(frozen=True)
class SignRequest:
    url: str
    ttl: float
    acl: str | None = None
    ip: str | None = None
    not_before: float | None = None
    kid: str | None = None
    cookie: bool = False
    private_key: Path | None = None  # cloudfront


@dataclass(frozen=True)
class Signed:
    url: str
    cookies: tuple[tuple[str, str], ...] = ()


def default_acl(path: str) -> str:
    """The video the path is in (``/v/{id}/``), else the path itself."""
    match = _VIDEO.match(path)
    return match.group(1) if match else path


def tokens_of(nodes: dict[str, NodeConfig], name: str | None) -> tuple[str, TokenConfig]:
    """The ``[tokens]`` of node ``name``, or of the first node that has some."""
    if name is not None:
        node = nodes.get(name)
        if node is None:
            raise ValueError(f"no node {name!r} in the topology; nodes: {', '.join(nodes)}")
        if node.tokens is None:
            raise ValueError(f"node {name!r} checks no tokens (no [node.{name}.tokens])")
        return name, node.tokens
    for node_name, node in nodes.items():
        if node.tokens is not None:
            return node_name, node.tokens
    raise ValueError("no node of the topology checks tokens: add [defaults.tokens] or "
                     "[node.NAME.tokens] (docs/tokens.md)")


def _append(url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    extra = "&".join(f"{name}={quote(value, safe='')}" for name, value in params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def sign_url(tokens: TokenConfig, request: SignRequest, now: float | None = None) -> Signed:
    """Sign ``request.url`` with the node's current key (or ``request.kid``)."""
    now = time.time() if now is None else now
    parts = urlsplit(request.url)
    if not parts.path.startswith("/"):
        raise ValueError(f"{request.url!r} is not an absolute URL or path")
    acl = request.acl or default_acl(parts.path)
    expires = int(now + request.ttl)
    kid = request.kid or tokens.current_key or next(iter(tokens.keys))
    if tokens.format != "cloudfront" and kid not in tokens.keys:
        raise ValueError(f"no key {kid!r} in the node's [tokens] keys")
    secret = tokens.keys.get(kid, b"")
    nbf = int(request.not_before) if request.not_before is not None else None
    if tokens.format == "native":
        from reelcdn.edge.auth import native

        token = native.sign(secret, kid, acl=acl, expires=expires, not_before=nbf,
                            ip=request.ip)
        if request.cookie:
            return Signed(request.url, ((tokens.cookie or "reelcdn_token", token),))
        return Signed(_append(request.url, [(tokens.query_param or "token", token)]))
    if tokens.format == "akamai":
        from reelcdn.edge.auth import akamai

        # Akamai's ACLs are globs with no prefix form: /v/abc/ grants /v/abc/* there.
        token = akamai.sign(secret, acl=acl + "*" if acl.endswith("/") else acl,
                            exp=expires, st=nbf, ip=request.ip,
                            algorithm=tokens.options.get("algorithm", "sha256"))
        name = tokens.query_param or ("__token__" if request.cookie else "hdnts")
        if request.cookie:
            return Signed(request.url, ((tokens.cookie or "__token__", token),))
        return Signed(_append(request.url, [(name, token)]))
    if tokens.format == "nginx_md5":
        from reelcdn.edge.auth import nginx_md5

        if request.cookie:
            raise ValueError("nginx secure_link tokens are query parameters, not cookies")
        params = nginx_md5.sign(parts.path, expires, secret, tokens.options["expression"],
                                client_ip=request.ip or "", host=parts.hostname or "")
        return Signed(_append(request.url, list(params.items())))
    if tokens.format == "cloudfront":
        return _sign_cloudfront(request, kid, acl, expires, nbf, parts)
    raise ValueError(f"unknown token format {tokens.format!r}")


def _sign_cloudfront(request: SignRequest, kid: str, acl: str, expires: int, nbf: int | None,
                     parts: object) -> Signed:
    """A CloudFront custom policy over the video (a wildcard resource), signed with the key
    pair's private key through botocore's ``CloudFrontSigner``."""
    import datetime

    from botocore.signers import CloudFrontSigner
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    if request.private_key is None:
        raise ValueError("cloudfront: --private-key PEM (the key pair's private key) is needed")
    key = serialization.load_pem_private_key(request.private_key.read_bytes(), password=None)

    def rsa_signer(message: bytes) -> bytes:
        return key.sign(message, padding.PKCS1v15(), hashes.SHA1())  # type: ignore[union-attr,call-arg]

    signer = CloudFrontSigner(kid, rsa_signer)
    split = urlsplit(request.url)
    resource = f"{split.scheme}://{split.netloc}{acl}" + ("*" if acl.endswith("/") else "")
    policy = signer.build_policy(
        resource, datetime.datetime.fromtimestamp(expires, datetime.UTC),
        date_greater_than=(datetime.datetime.fromtimestamp(nbf, datetime.UTC)
                           if nbf is not None else None),
        ip_address=request.ip)
    signed = signer.generate_presigned_url(request.url, policy=policy)
    if request.cookie:
        query = dict(pair.split("=", 1) for pair in urlsplit(signed).query.split("&")
                     if pair.split("=", 1)[0] in ("Policy", "Signature", "Key-Pair-Id"))
        return Signed(request.url, tuple((f"CloudFront-{name}", value)
                                         for name, value in query.items()))
    return Signed(signed)
