"""Serve a throw-away aiohttp app on an ephemeral loopback port, for tests of HTTP clients."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import yarl
from aiohttp import web


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[yarl.URL]:
    """Serve ``app`` on 127.0.0.1 and a free port; yield its base URL; clean up on exit."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield yarl.URL.build(scheme="http", host=host, port=port)
    finally:
        await runner.cleanup()
