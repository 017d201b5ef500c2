"""Range cases shared by the ranges tests: the parse_range tables (``test_ranges.py`` runs them
on each twin; ``test_extensions.py`` compares the twins on them) and the Hypothesis strategies
that draw range-specs and render them as Range headers.
"""

from __future__ import annotations

import re

from hypothesis import assume
from hypothesis import strategies as st

from reelcdn.extensions._ranges_py import UNSATISFIABLE

U = UNSATISFIABLE

# ---------------------------------------------------------------------------------------------
# Table-driven parse_range cases: (header, size, expected)
# ---------------------------------------------------------------------------------------------

PARSE_CASES: list[tuple[bytes | str | None, int, object]] = [
    # absent
    (None, 100, None),
    (None, 0, None),
    # basic forms
    (b"bytes=0-499", 1000, [(0, 500)]),
    (b"bytes=500-999", 1000, [(500, 1000)]),
    (b"bytes=500-", 1000, [(500, 1000)]),
    (b"bytes=-500", 1000, [(500, 1000)]),
    (b"bytes=0-0", 1000, [(0, 1)]),
    (b"bytes=5-5", 10, [(5, 6)]),
    (b"bytes=0-", 1000, [(0, 1000)]),
    (b"bytes=0-0,-1", 10, [(0, 1), (9, 10)]),
    (b"bytes=0-0,-1", 1, [(0, 1)]),  # both select byte 0: coalesced
    # str input
    ("bytes=0-499", 1000, [(0, 500)]),
    ("bytes=-1", 5, [(4, 5)]),
    # clipping of last-pos
    (b"bytes=0-999", 100, [(0, 100)]),
    (b"bytes=50-9999999999999999999", 100, [(50, 100)]),  # 19 digits: accepted
    (b"bytes=99-100", 100, [(99, 100)]),
    # suffix larger than size: whole object
    (b"bytes=-500", 100, [(0, 100)]),
    (b"bytes=-100", 100, [(0, 100)]),
    (b"bytes=-9999999999999999999", 100, [(0, 100)]),
    # unsatisfiable
    (b"bytes=100-", 100, U),  # first-pos == size
    (b"bytes=100-200", 100, U),
    (b"bytes=1000-2000", 100, U),
    (b"bytes=-0", 100, U),
    (b"bytes=-0", 0, U),
    (b"bytes=9999999999999999999-", 100, U),
    (b"bytes=100-200,-0", 100, U),
    # size 0: every valid range is unsatisfiable
    (b"bytes=0-0", 0, U),
    (b"bytes=0-", 0, U),
    (b"bytes=-1", 0, U),
    (b"bytes=-500", 0, U),
    (b"bytes=0-0,-1,5-", 0, U),
    # ...but an invalid header is still ignored
    (b"bytes=5-2", 0, None),
    (b"bytes=", 0, None),
    # multiple with one unsatisfiable: dropped
    (b"bytes=0-9,200-300", 100, [(0, 10)]),
    (b"bytes=200-300,0-9", 100, [(0, 10)]),
    (b"bytes=0-9,-0,20-29", 100, [(0, 10), (20, 30)]),
    (b"bytes=100-,90-", 100, [(90, 100)]),
    # sorting and coalescing
    (b"bytes=20-29,0-9", 100, [(20, 30), (0, 10)]),  # disjoint: the client's order is kept
    (b"bytes=20-29,0-9,5-12", 100, [(0, 13), (20, 30)]),  # overlap: sorted and merged
    (b"bytes=0-9,5-14", 100, [(0, 15)]),  # overlap
    (b"bytes=0-9,10-19", 100, [(0, 20)]),  # adjacent (gap of 0 bytes)
    (b"bytes=0-9,11-19", 100, [(0, 10), (11, 20)]),  # gap of 1 byte: kept apart
    (b"bytes=10-19,0-9", 100, [(0, 20)]),
    (b"bytes=0-99,10-19", 100, [(0, 100)]),  # contained
    (b"bytes=10-19,0-99", 100, [(0, 100)]),
    (b"bytes=0-0,0-0,0-0", 100, [(0, 1)]),  # duplicates
    (b"bytes=-10,90-", 100, [(90, 100)]),
    (b"bytes=-10,0-", 100, [(0, 100)]),
    (b"bytes=0-1,4-5,2-3", 100, [(0, 6)]),  # chain
    (b"bytes=50-59,0-9,30-39", 100, [(50, 60), (0, 10), (30, 40)]),
    (b"bytes=0-0,2-2,4-4,1-1,3-3", 100, [(0, 5)]),
    # whitespace (OWS) around '=', commas and the value
    (b"bytes = 0-1", 100, [(0, 2)]),
    (b"bytes\t=\t0-1", 100, [(0, 2)]),
    (b"  bytes=0-1  ", 100, [(0, 2)]),
    (b"bytes=0-1 , 5-6", 100, [(0, 2), (5, 7)]),
    (b"bytes=0-1,\t5-6", 100, [(0, 2), (5, 7)]),
    (b"bytes=0-1 ,\t 5-6 \t", 100, [(0, 2), (5, 7)]),
    # empty list elements
    (b"bytes=0-1,,5-6", 100, [(0, 2), (5, 7)]),
    (b"bytes=,0-1", 100, [(0, 2)]),
    (b"bytes=0-1,", 100, [(0, 2)]),
    (b"bytes=, ,0-1, ,", 100, [(0, 2)]),
    # case-insensitive unit
    (b"BYTES=0-1", 100, [(0, 2)]),
    (b"Bytes=0-1", 100, [(0, 2)]),
    ("bYtEs=-1", 100, [(99, 100)]),
    # other units: ignored
    (b"items=0-1", 100, None),
    (b"byte=0-1", 100, None),
    (b"bytess=0-1", 100, None),
    (b"none", 100, None),
    (b"", 100, None),
    (b"=0-1", 100, None),
    # invalid syntax: ignored
    (b"bytes=", 100, None),
    (b"bytes= ", 100, None),
    (b"bytes=,", 100, None),
    (b"bytes=, ,", 100, None),
    (b"bytes", 100, None),
    (b"bytes 0-1", 100, None),
    (b"bytes=5-2", 100, None),  # last < first
    (b"bytes=0-1,5-2", 100, None),  # one invalid spoils all
    (b"bytes=5-2,0-1", 100, None),
    (b"bytes=-", 100, None),
    (b"bytes=--1", 100, None),
    (b"bytes=1--2", 100, None),
    (b"bytes=0-1-2", 100, None),
    (b"bytes=1", 100, None),
    (b"bytes=a-b", 100, None),
    (b"bytes=0-a", 100, None),
    (b"bytes=0x10-", 100, None),
    (b"bytes=+1-2", 100, None),
    (b"bytes=1-+2", 100, None),
    (b"bytes=-+1", 100, None),
    (b"bytes=--0", 100, None),
    (b"bytes=1_0-20", 100, None),  # int() would accept this
    (b"bytes=1.5-2", 100, None),
    (b"bytes=0 -1", 100, None),  # no whitespace inside a range-spec
    (b"bytes=0- 1", 100, None),
    (b"bytes=- 1", 100, None),
    (b"bytes=0-1;5-6", 100, None),
    (b"bytes==0-1", 100, None),
    (b"bytes=0-1=", 100, None),
    (b"bytes=0-1\r\n", 100, None),
    (b"bytes=\x000-1", 100, None),
    (b"bytes=0-1\x0b", 100, None),  # only SP / HTAB are OWS
    ("bytes=\u0661-\u0662", 100, None),  # Arabic-Indic digits: str.isdigit() is True
    ("bytes=\u00b2-", 100, None),  # superscript two, also isdigit() in latin-1
    (b"bytes=\xb2-", 100, None),
    ("bytes=0-1\u00a0", 100, None),  # NBSP is not OWS
    (b"bytes=0-1\xa0", 100, None),
    # numbers longer than 19 digits: invalid, even with leading zeros
    (b"bytes=99999999999999999999-", 100, None),
    (b"bytes=0-99999999999999999999", 100, None),
    (b"bytes=-99999999999999999999", 100, None),
    (b"bytes=00000000000000000001-", 100, None),
    (b"bytes=0000000000000000001-0000000000000000002", 100, [(1, 3)]),  # 19 digits each
    (b"bytes=" + b"9" * 1000 + b"-", 100, None),
]

# parse_range with max_ranges: (header, max_ranges, expected); "list" is any list
MAX_RANGES_CASES: list[tuple[bytes, int, object]] = [
    (b"bytes=" + b",".join(b"%d-%d" % (i * 2, i * 2) for i in range(16)), 16, "list"),
    (b"bytes=" + b",".join(b"%d-%d" % (i * 2, i * 2) for i in range(17)), 16, None),
    (b"bytes=0-0,2-2,4-4", 2, None),
    (b"bytes=0-0,2-2", 2, [(0, 1), (2, 3)]),
    (b"bytes=0-0,,,,,,2-2", 2, [(0, 1), (2, 3)]),  # empty elements do not count
    (b"bytes=0-0,0-0,0-0", 2, None),  # counted before coalescing
    (b"bytes=500-,600-,700-", 2, None),  # and before dropping unsatisfiable ones
    (b"bytes=0-0", 1, [(0, 1)]),
    (b"bytes=0-0,1-1", 1, None),
    (b"bytes=0-0,1-1,5-2", 1, None),
]


# ---------------------------------------------------------------------------------------------
# Range-specs and Range headers, for Hypothesis
# ---------------------------------------------------------------------------------------------

# A range-spec for the reference: ("int", first, last | None) or ("suffix", length).
Spec = tuple[str, int, int | None]

MAX_POS = 10**19 - 1  # the largest 19-digit number

# Positions mostly near the object sizes we draw, sometimes huge.
positions = st.one_of(
    st.integers(min_value=0, max_value=12_000),
    st.integers(min_value=0, max_value=MAX_POS),
)


@st.composite
def int_specs(draw: st.DrawFn) -> Spec:
    first = draw(positions)
    if draw(st.booleans()):
        return ("int", first, None)
    last = draw(
        st.one_of(st.integers(min_value=first, max_value=min(first + 200, MAX_POS)), positions)
    )
    assume(last >= first)
    return ("int", first, last)


@st.composite
def suffix_specs(draw: st.DrawFn) -> Spec:
    return ("suffix", draw(positions), None)


specs = st.one_of(int_specs(), suffix_specs())


def render_spec(spec: Spec) -> str:
    kind, a, b = spec
    if kind == "suffix":
        return f"-{a}"
    return f"{a}-" if b is None else f"{a}-{b}"


ows = st.sampled_from(["", " ", "\t", "  ", " \t"])


@st.composite
def headers(draw: st.DrawFn, spec_list: list[Spec]) -> str:
    """Render specs with random OWS, empty elements, unit case and leading zeros."""
    elements = []
    for spec in spec_list:
        text = render_spec(spec)
        if draw(st.booleans()):
            # pad numbers with leading zeros, staying within 19 digits
            text = re.sub(r"\d+", lambda m: m.group(0).zfill(min(19, len(m.group(0)) + 2)), text)
        elements.append(draw(ows) + text + draw(ows))
        for _ in range(draw(st.integers(min_value=0, max_value=1))):
            elements.append(draw(ows))  # empty list element
    if draw(st.booleans()):
        elements.insert(0, draw(ows))
    unit = draw(st.sampled_from(["bytes", "BYTES", "Bytes", "bYtEs"]))
    return draw(ows) + unit + draw(ows) + "=" + draw(ows) + ",".join(elements) + draw(ows)
