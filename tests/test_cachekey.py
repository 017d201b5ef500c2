"""Cache-key normalisation: what must and must not make two requests share one object."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from reelcdn.edge.cache.keys import cache_key, normalise_component, split_target
from reelcdn.edge.config import DEFAULT_IGNORE_QUERY_PARAMS

IGNORED = frozenset(DEFAULT_IGNORE_QUERY_PARAMS)

names = st.text(alphabet=string.ascii_lowercase + "_-", min_size=1, max_size=8)
values = st.text(alphabet=string.ascii_letters + string.digits + "%-._~", max_size=10)
params = st.lists(st.tuples(names, values), max_size=6)


def test_examples():
    assert cache_key("/a", "b=2&a=1", IGNORED) == "/a?a=1&b=2"
    assert cache_key("/a", "CMCD=bl%3D1&token=x&a=1", IGNORED) == "/a?a=1"
    assert cache_key("/a", "CMCD=1", IGNORED) == "/a"
    assert cache_key("/%7euser/%2f", "", IGNORED) == "/~user/%2F"
    assert cache_key("/a", "", IGNORED, host="Example.COM") == "example.com/a"
    assert split_target("/p?q=1#frag") == ("/p", "q=1")


@given(params, st.randoms())
def test_order_of_parameters_does_not_matter(pairs, rnd):
    query = "&".join(f"{n}={v}" for n, v in pairs)
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    other = "&".join(f"{n}={v}" for n, v in shuffled)
    assert cache_key("/x", query, IGNORED) == cache_key("/x", other, IGNORED)


@given(params, st.sampled_from(sorted(IGNORED)), values)
def test_ignored_parameters_never_matter(pairs, ignored_name, value):
    query = "&".join(f"{n}={v}" for n, v in pairs)
    with_ignored = query + ("&" if query else "") + f"{ignored_name.upper()}={value}"
    assert cache_key("/x", query, IGNORED) == cache_key("/x", with_ignored, IGNORED)


@given(params, params)
def test_different_kept_parameters_give_different_keys(a, b):
    kept_a = sorted(f"{n}={v}" for n, v in a if n not in IGNORED)
    kept_b = sorted(f"{n}={v}" for n, v in b if n not in IGNORED)
    qa = "&".join(f"{n}={v}" for n, v in a)
    qb = "&".join(f"{n}={v}" for n, v in b)
    if [normalise_component(p) for p in kept_a] != [normalise_component(p) for p in kept_b]:
        assert cache_key("/x", qa, IGNORED) != cache_key("/x", qb, IGNORED)


@given(st.text(alphabet=string.printable, max_size=40))
def test_normalisation_is_idempotent(text):
    once = normalise_component(text)
    assert normalise_component(once) == once


@given(st.text(alphabet=st.characters(blacklist_characters="%?#", blacklist_categories=("Cs",)),
               max_size=40).map(lambda p: "/" + p))
def test_a_plain_path_is_its_own_key(path):
    """CacheNode.receive keys a request with no query, no '%' and no host_in_key by its path
    without calling cache_key (the HIT path saves the call): this pins that equivalence."""
    assert cache_key(path, "", frozenset({"token"}), ("utm_",)) == path
