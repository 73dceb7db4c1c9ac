"""Shared fixtures: the real Kafka broker, the DLI simulator and clients live in plugin modules."""

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.kafka_fixtures", "tests.sim_fixtures", "tests.client_fixtures"]

# Starting the session's broker cold takes 10-25 s; the default 30 s per-test timeout is for
# everything else.
BROKER_TIMEOUT_S = 180


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the broker get a longer timeout unless they set their own."""
    for item in items:
        needs_broker = "kafka_bootstrap" in getattr(item, "fixturenames", ())
        if (item.get_closest_marker("integration") or needs_broker) and not item.get_closest_marker(
            "timeout"
        ):
            item.add_marker(pytest.mark.timeout(BROKER_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """`dli-bridge` commands run in-process reconfigure the root logger; undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
