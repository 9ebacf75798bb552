"""Hypothesis strategies for hostile reading messages (shared by the unit and broker tests).

Each payload is raw JSON text built from fragments, so it can hold what
``json.dumps`` would never write: integer literals longer than Python converts,
nesting deeper than the decoder recurses, strings near the size limit, lone
surrogates and other odd unicode.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from wire.readings import MAX_MESSAGE_BYTES

HUGE_INT = st.integers(4301, 6000).map(lambda n: "9" * n) | st.integers(4301, 5000).map(
    lambda n: "-" + "1" * n
)
"""Integer literals beyond CPython's 4300-digit conversion limit."""
BIG_INT = st.integers(310, 4300).map(lambda n: "7" * n)
"""Integer literals Python converts but no float holds."""
DEEP = st.integers(2_000, 200_000).map(lambda d: "[" * d + "]" * d) | st.integers(2_000, 50_000).map(
    lambda d: '{"a":' * d + "1" + "}" * d
)
"""Nesting deeper than the JSON decoder recurses."""
HUGE_STRING = st.integers(10_000, MAX_MESSAGE_BYTES - 1_000).map(lambda n: json.dumps("s" * n))
ODD_TEXT = st.text(
    st.characters(codec=None, categories=("Cs", "Co", "Cn", "Cc", "Zl", "Zp", "Mn", "So")),
    min_size=1,
    max_size=12,
)
ODD_STRING = st.builds(lambda t, ascii: json.dumps(t, ensure_ascii=ascii), ODD_TEXT, st.booleans())
"""Lone surrogates, private use, unassigned, control, separator, combining and symbol characters."""
NUMBER = st.floats(-1e6, 1e6).map(repr) | st.integers(-1000, 1000).map(str)

HOSTILE_VALUE = st.one_of(HUGE_INT, BIG_INT, DEEP, HUGE_STRING, ODD_STRING)


FIELDS = ("device_id", "x", "y", "ts", "extra")
"""Where a hostile value may go; one in ``x``, ``y`` or ``ts`` always makes the reading bad."""


@st.composite
def hostile_reading(draw: st.DrawFn, n_features: int, where_in: tuple[str, ...] = FIELDS) -> tuple[str, str]:
    """One reading object (JSON text) with a hostile value in one field, and the field's name."""
    device = draw(st.sampled_from(['"hostile"', "HOSTILE"]))
    x = [draw(NUMBER) for _ in range(n_features)]
    y = draw(NUMBER)
    ts: str | None = None
    where = draw(st.sampled_from(where_in))
    value = draw(HOSTILE_VALUE)
    if where == "device_id":
        device = value
    elif where == "x":
        x[draw(st.integers(0, n_features - 1))] = value
    elif where == "y":
        y = value
    elif where == "ts":
        ts = value
    if device == "HOSTILE":
        device = json.dumps(f"hostile-{draw(st.integers(0, 9))}")
    fields = [f'"device_id":{device}', f'"x":[{",".join(x)}]', f'"y":{y}']
    if ts is not None:
        fields.append(f'"ts":{ts}')
    if where == "extra":
        fields.append(f'"extra":{value}')
    return "{" + ",".join(fields) + "}", where


def as_message(reading: str) -> bytes:
    """A single-reading message (``"v":1`` added); lone surrogates become invalid UTF-8."""
    return ('{"v":1,' + reading[1:]).encode(errors="surrogatepass")


@st.composite
def hostile_message(draw: st.DrawFn, n_features: int, where_in: tuple[str, ...] = FIELDS) -> bytes:
    """A single-reading message with a hostile value somewhere (in ``extra`` or ``device_id`` it may pass)."""
    reading, _ = draw(hostile_reading(n_features, where_in))
    return as_message(reading)
