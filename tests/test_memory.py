"""The heap trimmer: one trim (and freeze) shortly after large writes, none for small ones."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bridge.memory import Trimmer, _malloc_trim


async def test_large_writes_share_one_trim_and_small_ones_none():
    trimmer = Trimmer(min_jobs=10, delay_s=0.05)
    if _malloc_trim() is None:
        pytest.fail("this suite runs on glibc Linux; malloc_trim must be found")
    assert trimmer.after_write(5) is False  # small: nothing scheduled
    assert trimmer.after_write(10) is True
    assert trimmer.after_write(500) is True  # joins the pending trim
    await asyncio.sleep(0.15)
    assert trimmer.trims == 1
    assert trimmer.after_write(100) is True  # a later large write: a new trim
    await asyncio.sleep(0.15)
    assert trimmer.trims == 2
    assert "glibc" in repr(trimmer)


async def test_cancel_drops_a_pending_trim():
    trimmer = Trimmer(min_jobs=1, delay_s=0.05)
    trimmer.after_write(1)
    trimmer.cancel()
    await asyncio.sleep(0.1)
    assert trimmer.trims == 0


async def test_a_trim_freezes_what_is_alive_and_collects_young_cycles_first():
    class Node:
        pass

    kept = [Node() for _ in range(50)]
    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    freed: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            freed.append(info["collected"])

    gc.callbacks.append(count)
    del cycle
    trimmer = Trimmer(min_jobs=1, delay_s=0.01)
    try:
        before = gc.get_freeze_count()
        trimmer.after_write(1)
        await asyncio.sleep(0.1)
        assert trimmer.trims == 1
        assert gc.get_freeze_count() >= before + len(kept)
        frozen = {id(n) for n in kept}
        assert not frozen & {id(o) for o in gc.get_objects()}  # out of every generation
        assert sum(freed) >= 1  # the garbage cycle went before the freeze
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
