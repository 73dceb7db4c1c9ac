"""Fixtures that build DliClients: one shared HTTP session and a ``make_client`` factory."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from bridge.auth import Auth, NoAuth
from bridge.client import DliClient, new_session
from bridge.settings import ApiSettings
from tests.fakes import RecordingSleep

MakeClient = Callable[..., AbstractAsyncContextManager[DliClient]]

# Fast limits for tests: buckets never make a test wait unless it asks for that.
TEST_API: dict[str, Any] = {
    "retry_attempts": 3,
    "project_rate_per_s": 1000.0,
    "project_burst": 1000,
    "credential_rate_per_s": 1000.0,
    "credential_burst": 1000,
    "request_timeout_s": 5.0,
}


def api_settings(base_url: str, **overrides: Any) -> ApiSettings:
    """ApiSettings pointing DLI and IAM at ``base_url``, with test limits and ``overrides``."""
    values = {"endpoint": base_url, "iam_endpoint": base_url, **TEST_API}
    return ApiSettings(**(values | overrides))


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The one HTTP session of a test, as the composer owns it in the app."""
    async with new_session() as session:
        yield session


@pytest.fixture
def make_client(http_session: aiohttp.ClientSession) -> MakeClient:
    """Factory: ``async with make_client(base_url, **overrides) as client``.

    Keywords ``auth`` (default NoAuth), ``sleep`` (default a RecordingSleep), ``clock``,
    ``wall_clock`` and ``rng`` go to DliClient; everything else overrides an ApiSettings
    field. Every client borrows the test's ``http_session``.
    """

    @asynccontextmanager
    async def factory(
        base_url: str,
        *,
        auth: Auth | None = None,
        sleep: Any = None,
        rng: random.Random | None = None,
        **overrides: Any,
    ) -> AsyncIterator[DliClient]:
        clocks = {k: overrides.pop(k) for k in ("clock", "wall_clock") if k in overrides}
        client = DliClient(
            api_settings(base_url, **overrides),
            auth or NoAuth(),
            http_session,
            sleep=sleep or RecordingSleep(),
            rng=rng or random.Random(1),
            **clocks,
        )
        async with client:
            yield client

    return factory
