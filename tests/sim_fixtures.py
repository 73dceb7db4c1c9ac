"""Fixtures that serve the DLI simulator on an ephemeral loopback port."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from bridge.simulator import Simulator, SimulatorConfig

MakeSimulator = Callable[..., AbstractAsyncContextManager[tuple[Simulator, str]]]


@pytest.fixture
def make_simulator() -> MakeSimulator:
    """Factory: ``async with make_simulator(**config) as (sim, base_url)``.

    Keyword arguments are ``SimulatorConfig`` fields, plus ``clock`` (a ``() -> float`` of
    epoch seconds) to pin time. The simulator stops serving when the block exits.
    """

    @asynccontextmanager
    async def factory(
        *, clock: Callable[[], float] = time.time, **config: Any
    ) -> AsyncIterator[tuple[Simulator, str]]:
        sim = Simulator(SimulatorConfig(**config), clock=clock)
        async with sim.serve() as base_url:
            yield sim, base_url

    return factory


@pytest.fixture
async def simulator(make_simulator: MakeSimulator) -> AsyncIterator[tuple[Simulator, str]]:
    """A default simulator (3 projects x 10 jobs, seed 0, no auth, no faults) and its URL."""
    async with make_simulator() as served:
        yield served
