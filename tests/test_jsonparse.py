"""JSON on the hot path reads and writes every value exactly: integers beyond 64 bits and
lone surrogates included, where orjson alone would change or refuse them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_trio import jsonparse

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(value=values)
@example(value={"": -9223372036854775809})
@example(value={"big": 2**64, "small": -(2**63) - 1})
@example(value=["\ud800", "é 🦙"])
def test_what_is_written_reads_back_the_same(value: Any) -> None:
    written = jsonparse.dumps(value)
    assert jsonparse.loads(written) == value
    assert json.loads(written) == value
    assert jsonparse.loads(json.dumps(value)) == value
