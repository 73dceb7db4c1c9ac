"""Deadlines: per-request timeouts sharing a timer per tick, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio

import pytest

from bridge.deadlines import Deadlines


async def test_a_slow_block_times_out_within_its_tick():
    deadlines = Deadlines(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines():
            await asyncio.sleep(5)
    waited = loop.time() - started
    assert 0.19 <= waited < 0.2 + deadlines.tick_s + 0.5  # never early; late by a tick at most
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_fast_block_is_untouched_and_leaves_no_cancel_behind():
    deadlines = Deadlines(0.1)
    async with deadlines():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.25)  # past its group's timer: nothing may be cancelled now
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_blocks_of_one_tick_share_a_timer_and_only_those_inside_are_cancelled():
    deadlines = Deadlines(0.3, tick_s=0.3)
    outcomes: dict[str, str] = {}

    async def block(name: str, seconds: float) -> None:
        try:
            async with deadlines():
                await asyncio.sleep(seconds)
            outcomes[name] = "done"
        except TimeoutError:
            outcomes[name] = "timeout"

    async with asyncio.TaskGroup() as group:
        for index in range(20):
            group.create_task(block(f"slow{index}", 5))
        group.create_task(block("quick", 0.05))
        assert len(deadlines._groups) <= 2  # 21 blocks, one or two ticks
    assert outcomes.pop("quick") == "done"
    assert set(outcomes.values()) == {"timeout"}
    assert not deadlines._groups  # fired groups are dropped


async def test_a_cancel_from_outside_stays_a_cancel():
    deadlines = Deadlines(0.2)
    entered = asyncio.Event()

    async def block() -> None:
        async with deadlines():
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(block())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outer_cancel_during_an_expired_block_is_not_swallowed():
    """Both the timer and an outer cancel hit the block: the outer one wins, as in asyncio."""
    deadlines = Deadlines(0.05, tick_s=0.05)

    async def block() -> None:
        async with deadlines():
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                raise

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(block())


def test_the_timeout_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Deadlines(0)
