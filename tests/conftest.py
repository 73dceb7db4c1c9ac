"""Shared fixtures: the real Kafka broker and the DLI simulator live in their own modules."""

from tests.kafka_fixtures import group_name, kafka_bootstrap, topic_name  # noqa: F401
from tests.sim_fixtures import make_simulator, simulator  # noqa: F401
