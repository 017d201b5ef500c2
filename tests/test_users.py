"""User tokens (mint, verify, key rotation, key files), the upload rate limiter, and
``reelcdn user-token``."""

from __future__ import annotations

import pytest

from reelcdn.cli import main
from reelcdn.origin.users import (
    BadToken,
    Keys,
    RateLimiter,
    load_keys,
    mint,
    parse_duration,
    parse_keys,
    verify,
)

OLD = ("k1", b"o" * 32)
NEW = ("k2", b"n" * 48)
NOW = 1_800_000_000.0


def reason(token: str, keys: dict[str, bytes], now: float = NOW) -> str:
    with pytest.raises(BadToken) as caught:
        verify(token, keys, now)
    return caught.value.reason


def test_a_token_names_its_user_until_it_expires():
    token = mint("alice_01", OLD, 3600, now=NOW)
    assert token.startswith("alice_01.1800003600.k1.")
    assert all(c.isalnum() or c in "._-" for c in token)  # URL-safe as it is
    assert verify(token, dict([OLD]), NOW + 3599) == "alice_01"
    assert reason(token, dict([OLD]), NOW + 3600) == "expired"


def test_rotation_accepts_every_listed_key():
    old, new = mint("bob", OLD, 60, now=NOW), mint("bob", NEW, 60, now=NOW)
    both = dict([OLD, NEW])
    assert verify(old, both, NOW) == verify(new, both, NOW) == "bob"
    assert reason(old, dict([NEW]), NOW) == "unknown_key"


def test_tampering_is_refused():
    token = mint("alice", OLD, 60, now=NOW)
    name, exp, kid, sig = token.split(".")
    keys = dict([OLD])
    assert reason(f"mallory.{exp}.{kid}.{sig}", keys) == "bad_signature"
    assert reason(f"{name}.{int(exp) + 999}.{kid}.{sig}", keys) == "bad_signature"
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert reason(f"{name}.{exp}.{kid}.{flipped}", keys) == "bad_signature"
    # Signed by a key of the same id that is not ours.
    assert reason(mint("alice", ("k1", b"x" * 32), 60, now=NOW), keys) == "bad_signature"
    # Expired and forged: the signature is what is reported.
    assert reason(f"mallory.{exp}.{kid}.{sig}", keys, NOW + 10**6) == "bad_signature"


@pytest.mark.parametrize("token", [
    "", "a.b.c", "alice.1.k1.sig.extra", "al ice.1800000060.k1." + "A" * 43,
    "alice.-5.k1." + "A" * 43, "alice.1800000060.k1." + "A" * 42, "alice.1800000060.k1." + "+" * 43,
    "a" * 500,
])
def test_malformed_tokens(token):
    assert reason(token, dict([OLD])) == "malformed"


def test_mint_refuses_bad_input():
    for name in ("", "a b", "a.b", "x" * 65):
        with pytest.raises(ValueError):
            mint(name, OLD, 60)
    with pytest.raises(ValueError):
        mint("alice", OLD, 0)


def test_key_files(tmp_path):
    keys = parse_keys("# rotated 2027-01\nk2 " + "n" * 40 + "\nk1 " + "o" * 40 + "  # old\n")
    assert keys.current == "k2" and set(keys.keys) == {"k1", "k2"}
    assert parse_keys("z" * 40 + "\n") == Keys({"k0": b"z" * 40}, "k0")
    for bad in ("", "k1 short", "k1 " + "a" * 40 + "\nk1 " + "b" * 40, "k1 a b c",
                "bad.id " + "a" * 40):
        with pytest.raises(ValueError):
            parse_keys(bad)
    path = tmp_path / "keys"
    path.write_text("k7 " + "s" * 40 + "\n")
    assert load_keys(path).current == "k7"


def test_durations():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90") == parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400
    for bad in ("", "0", "-1h", "3y", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_rate_limiter_is_a_token_bucket_per_user():
    limiter = RateLimiter(rate=3, window=60)
    assert [limiter.take("alice", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("alice", 0.0)
    assert wait == pytest.approx(20.0) and RateLimiter.retry_after(wait) == "20"
    assert limiter.take("bob", 0.0) == 0.0  # another user's bucket
    assert limiter.take("alice", 19.0) == pytest.approx(1.0)
    assert limiter.take("alice", 20.0) == 0.0  # one token back after 20 s
    assert limiter.take("alice", 20.0) > 0
    assert [limiter.take("alice", 1000.0) for _ in range(4)][-1] > 0  # the burst stays 3
    assert RateLimiter.retry_after(0.2) == "1"


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=1, window=60, max_users=100)
    for n in range(1000):
        limiter.take(f"user{n}", 0.0)
    assert len(limiter._buckets) == 100


def test_user_token_command(tmp_path, capsys):
    path = tmp_path / "keys"
    path.write_text("k2 " + "n" * 40 + "\nk1 " + "o" * 40 + "\n")
    assert main(["user-token", "carol", "--key-file", str(path), "--ttl", "2h"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify(token, load_keys(path)) == "carol" and ".k2." in token
    assert main(["user-token", "carol", "--key-file", str(path), "--kid", "k1"]) == 0
    assert ".k1." in capsys.readouterr().out
    assert main(["user-token", "carol", "--key-file", str(path), "--kid", "k9"]) == 2
    assert main(["user-token", "carol", "--key-file", str(tmp_path / "none")]) == 2
    assert "user-token" in capsys.readouterr().err
