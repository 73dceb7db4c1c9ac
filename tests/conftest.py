"""Shared fixtures: the real Kafka broker and the DLI simulator live in their own modules."""

import logging
from collections.abc import Iterator

import pytest

from tests.kafka_fixtures import group_name, kafka_bootstrap, topic_name  # noqa: F401
from tests.sim_fixtures import make_simulator, simulator  # noqa: F401


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """`dli-bridge` commands run in-process reconfigure the root logger; undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
