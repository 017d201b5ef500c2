"""Tests for reelcdn.edge.http.conditional: RFC 9110 §13 preconditions answered from the cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelcdn.edge.http.conditional import (
    evaluate,
    if_range_allows,
    parse_etags,
    strong_match,
    weak_match,
)

LM = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sat, 05 Nov 1994 08:49:37 GMT"
LATER = "Mon, 07 Nov 1994 08:49:37 GMT"
LM_RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
LM_ASCTIME = "Sun Nov  6 08:49:37 1994"
ETAG = '"v1"'

# ---------------------------------------------------------------------------------------------
# parse_etags
# ---------------------------------------------------------------------------------------------

ETAG_LIST_CASES: list[tuple[str, object]] = [
    ("*", "*"),
    (" * ", "*"),
    ('"a"', ['"a"']),
    ('W/"a"', ['W/"a"']),
    ('"a", W/"b" ,"c"', ['"a"', 'W/"b"', '"c"']),
    ('"a,b", "c"', ['"a,b"', '"c"']),  # comma inside the opaque-tag
    ('""', ['""']),
    ("", []),
    (" , ,", []),
    ('"a",,"b"', ['"a"', '"b"']),  # empty list elements
    ("abc", []),  # unquoted: malformed
    ('abc, "d"', ['"d"']),
    ('"a"x, "b"', ['"b"']),  # junk after the tag
    ('w/"a", "b"', ['"b"']),  # W/ is case-sensitive
    ('W/ "a"', []),
    ('"a", *', ['"a"']),  # "*" only as the whole value
    ('"a", "b', ['"a"']),  # unterminated
    ('\t"a"\t,\t"b"\t', ['"a"', '"b"']),
]


@pytest.mark.parametrize(("value", "expected"), ETAG_LIST_CASES)
def test_parse_etags(value: str, expected: object) -> None:
    assert parse_etags(value) == expected


# RFC 9110 §8.8.3.2, the comparison table, plus malformed tags.
MATCH_CASES: list[tuple[str | None, str | None, bool, bool]] = [
    ('W/"1"', 'W/"1"', False, True),
    ('W/"1"', 'W/"2"', False, False),
    ('W/"1"', '"1"', False, True),
    ('"1"', '"1"', True, True),
    ('"1"', '"2"', False, False),
    ('"1"', ' "1" ', True, True),
    ('""', '""', True, True),
    ("1", "1", False, False),  # unquoted
    ('"1"', None, False, False),
    (None, None, False, False),
    ('"a"b"', '"a"b"', False, False),
    ('w/"1"', '"1"', False, False),
]


@pytest.mark.parametrize(("a", "b", "strong", "weak"), MATCH_CASES)
def test_comparison(a: str | None, b: str | None, strong: bool, weak: bool) -> None:
    assert strong_match(a, b) is strong
    assert strong_match(b, a) is strong
    assert weak_match(a, b) is weak
    assert weak_match(b, a) is weak


ETAGC = st.characters(
    codec="latin-1", exclude_characters='"', exclude_categories=("Cc", "Zs")
)  # etagc = %x21 / %x23-7E / obs-text (no controls, no space)
TAG = st.builds(
    lambda weak, opaque: ("W/" if weak else "") + f'"{opaque}"',
    st.booleans(),
    st.text(alphabet=ETAGC, max_size=12),
)
OWS = st.sampled_from(["", " ", "\t", "  "])


@given(st.lists(st.tuples(TAG, OWS, OWS), min_size=1, max_size=8), st.booleans())
def test_parse_etags_round_trip(items: list[tuple[str, str, str]], empties: bool) -> None:
    sep = ", ," if empties else ","
    value = sep.join(f"{before}{tag}{after}" for tag, before, after in items)
    assert parse_etags(value) == [tag for tag, _, _ in items]


@given(st.text())
def test_parse_etags_never_raises(value: str) -> None:
    tags = parse_etags(value)
    if tags != "*":
        assert all(weak_match(t, t) for t in tags)


# ---------------------------------------------------------------------------------------------
# evaluate (RFC 9110 §13.2.2)
# ---------------------------------------------------------------------------------------------

EVAL_CASES: list[tuple[str, dict[str, object], int | None]] = [
    ("no preconditions", {}, None),
    # If-None-Match: weak comparison, 304 for GET/HEAD, 412 otherwise
    ("inm match", {"if_none_match": ETAG}, 304),
    ("inm weak match", {"if_none_match": 'W/"v1"'}, 304),
    ("inm stored weak", {"if_none_match": '"v1"', "etag": 'W/"v1"'}, 304),
    ("inm list", {"if_none_match": '"x", "v1"'}, 304),
    ("inm no match", {"if_none_match": '"v2"'}, None),
    ("inm star", {"if_none_match": "*"}, 304),
    ("inm star no etag", {"if_none_match": "*", "etag": None}, 304),
    ("inm HEAD", {"method": "HEAD", "if_none_match": ETAG}, 304),
    ("inm POST", {"method": "POST", "if_none_match": ETAG}, 412),
    ("inm no stored etag", {"if_none_match": ETAG, "etag": None}, None),
    ("inm junk", {"if_none_match": "v1"}, None),
    # If-None-Match present: If-Modified-Since ignored
    ("inm beats ims", {"if_none_match": '"v2"', "if_modified_since": LM}, None),
    ("inm match beats ims", {"if_none_match": ETAG, "if_modified_since": EARLIER}, 304),
    # If-Modified-Since
    ("ims equal", {"if_modified_since": LM}, 304),
    ("ims later", {"if_modified_since": LATER}, 304),
    ("ims earlier", {"if_modified_since": EARLIER}, None),
    ("ims other format", {"if_modified_since": LM_RFC850}, 304),
    ("ims asctime", {"if_modified_since": LM_ASCTIME}, 304),
    ("ims invalid", {"if_modified_since": "yesterday"}, None),
    ("ims list", {"if_modified_since": f"{LM}, {LATER}"}, None),
    ("ims no last-modified", {"if_modified_since": LATER, "last_modified": None}, None),
    (
        "ims falls back to Date",
        {"if_modified_since": LM, "last_modified": None, "date": EARLIER},
        304,
    ),
    ("ims Date newer", {"if_modified_since": EARLIER, "last_modified": None, "date": LM}, None),
    ("ims POST ignored", {"method": "POST", "if_modified_since": LATER}, None),
    ("ims PUT ignored", {"method": "PUT", "if_modified_since": LATER}, None),
    # If-Match: strong comparison, 412
    ("im match", {"if_match": ETAG}, None),
    ("im list", {"if_match": '"a", "v1"'}, None),
    ("im no match", {"if_match": '"v2"'}, 412),
    ("im weak never", {"if_match": 'W/"v1"'}, 412),
    ("im stored weak", {"if_match": '"v1"', "etag": 'W/"v1"'}, 412),
    ("im star", {"if_match": "*"}, None),
    ("im star no etag", {"if_match": "*", "etag": None}, None),
    ("im no etag", {"if_match": ETAG, "etag": None}, 412),
    ("im empty", {"if_match": ""}, 412),
    # If-Match evaluated before If-None-Match
    ("im fails before inm", {"if_match": '"v2"', "if_none_match": ETAG}, 412),
    ("im ok then inm", {"if_match": ETAG, "if_none_match": ETAG}, 304),
    # If-Unmodified-Since: only without If-Match
    ("ius later ok", {"if_unmodified_since": LATER}, None),
    ("ius equal ok", {"if_unmodified_since": LM}, None),
    ("ius earlier", {"if_unmodified_since": EARLIER}, 412),
    ("ius invalid ignored", {"if_unmodified_since": "garbage"}, None),
    ("ius list ignored", {"if_unmodified_since": f"{EARLIER}, {EARLIER}"}, None),
    ("ius no last-modified", {"if_unmodified_since": EARLIER, "last_modified": None}, None),
    ("ius ignored with im", {"if_match": ETAG, "if_unmodified_since": EARLIER}, None),
    ("ius before inm", {"if_unmodified_since": EARLIER, "if_none_match": ETAG}, 412),
    ("ius ok then ims", {"if_unmodified_since": LATER, "if_modified_since": LM}, 304),
    # status other than 200: preconditions not evaluated
    ("404", {"status": 404, "if_none_match": ETAG}, None),
    ("206", {"status": 206, "if_match": '"nope"'}, None),
    ("301", {"status": 301, "if_modified_since": LATER}, None),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), [pytest.param(k, e, id=name) for name, k, e in EVAL_CASES]
)
def test_evaluate(kwargs: dict[str, object], expected: int | None) -> None:
    kw: dict[str, object] = {"etag": ETAG, "last_modified": LM, **kwargs}
    method = kw.pop("method", "GET")
    status = kw.pop("status", 200)
    assert evaluate(method, status, **kw) == expected  # type: ignore[arg-type]


def test_evaluate_all_keywords() -> None:
    assert (
        evaluate(
            "GET",
            200,
            if_match=None,
            if_none_match=None,
            if_modified_since=LM,
            if_unmodified_since=None,
            etag=None,
            last_modified=LM,
        )
        == 304
    )


# ---------------------------------------------------------------------------------------------
# If-Range (RFC 9110 §13.1.5)
# ---------------------------------------------------------------------------------------------

IF_RANGE_CASES: list[tuple[str, str | None, str | None, str | None, bool]] = [
    ("absent", None, ETAG, LM, True),
    ("absent no validators", None, None, None, True),
    ("etag match", ETAG, ETAG, LM, True),
    ("etag padded", f" {ETAG} ", ETAG, LM, True),
    ("etag mismatch", '"v2"', ETAG, LM, False),
    ("weak tag never", 'W/"v1"', ETAG, LM, False),
    ("stored weak never", ETAG, 'W/"v1"', LM, False),
    ("no stored etag", ETAG, None, LM, False),
    ("etag list", f'{ETAG}, "v2"', ETAG, LM, False),
    ("date equal", LM, ETAG, LM, True),
    ("date equal other format", LM_RFC850, None, LM, True),
    ("date earlier", EARLIER, None, LM, False),
    ("date later", LATER, None, LM, False),  # exact match only
    ("date no last-modified", LM, ETAG, None, False),
    ("invalid date", "yesterday", ETAG, LM, False),
    ("empty", "", ETAG, LM, False),
    ("star", "*", ETAG, LM, False),
]


@pytest.mark.parametrize(
    ("if_range", "etag", "last_modified", "expected"),
    [pytest.param(i, e, lm, x, id=name) for name, i, e, lm, x in IF_RANGE_CASES],
)
def test_if_range_allows(
    if_range: str | None, etag: str | None, last_modified: str | None, expected: bool
) -> None:
    assert if_range_allows(if_range, etag, last_modified) is expected


@given(
    st.one_of(st.none(), st.text()),
    st.one_of(st.none(), st.text()),
    st.one_of(st.none(), st.text()),
    st.one_of(st.none(), st.text()),
    st.sampled_from(["GET", "HEAD", "POST"]),
)
def test_evaluate_never_raises(
    im: str | None, inm: str | None, ims: str | None, ius: str | None, method: str
) -> None:
    result = evaluate(
        method,
        200,
        if_match=im,
        if_none_match=inm,
        if_modified_since=ims,
        if_unmodified_since=ius,
        etag=ETAG,
        last_modified=LM,
    )
    assert result in (None, 304, 412)
    assert isinstance(if_range_allows(im, ETAG, LM), bool)
