"""Folding a state partition: latest value per key, tombstones, the generation filter."""

from __future__ import annotations

import pytest

from bridge.state import Fold, generation_of


def gen(n: int) -> tuple[tuple[str, bytes], ...]:
    return (("schema_version", b"1"), ("generation", b"%d" % n))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [((), 0), (gen(7), 7), ((("generation", b"x"),), 0), ((("other", b"3"),), 0)],
)
def test_generation_of(headers, expected):
    assert generation_of(headers) == expected


@pytest.mark.parametrize(
    ("records", "values", "skipped"),
    [
        ([(b"a", b"1", gen(0)), (b"a", b"2", gen(0))], {b"a": b"2"}, 0),
        ([(b"a", b"1", gen(0)), (b"a", None, gen(0))], {}, 0),
        ([(b"a", None, gen(0)), (b"a", b"3", gen(0))], {b"a": b"3"}, 0),
        # a lower generation before a higher one is history, not a zombie
        ([(b"a", b"1", gen(1)), (b"b", b"1", gen(2))], {b"a": b"1", b"b": b"1"}, 0),
        # a lower generation after a higher one is a stale owner's late write
        ([(b"a", b"2", gen(2)), (b"a", b"z", gen(1)), (b"a", None, gen(1))], {b"a": b"2"}, 2),
        ([(None, b"keyless", gen(0))], {}, 0),
    ],
)
def test_fold_keeps_latest_value_of_newest_generation(records, values, skipped):
    fold = Fold()
    for key, value, headers in records:
        fold.add(key, value, headers)
    assert fold.values == values
    assert fold.skipped_stale == skipped
    assert fold.records == len(records)
