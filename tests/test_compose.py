"""docker-compose.yml parses and agrees with the code's defaults (names, ports, Kafka version)."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import localkafka, simulator
from bridge.cli import build_parser
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def host_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def test_services_are_kafka_simulator_and_bridge(compose):
    assert set(compose["services"]) == {"kafka", "simulator", "bridge"}


def test_kafka_is_the_official_image_at_the_default_version(compose):
    image = compose["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{localkafka.DEFAULT_KAFKA_VERSION}"


def test_kafka_runs_kraft_single_node(compose):
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert "PLAINTEXT://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert 9092 in host_ports(compose["services"]["kafka"])


def test_simulator_command_parses_with_our_cli_and_publishes_its_port(compose):
    service = compose["services"]["simulator"]
    command = service["command"]
    assert command[:2] == ["dli-bridge", "simulate"]
    args = build_parser().parse_args(command[1:])
    assert args.port == simulator.DEFAULT_PORT
    assert host_ports(service) == {simulator.DEFAULT_PORT}


def test_bridge_points_at_the_compose_kafka_and_simulator(compose):
    env = compose["services"]["bridge"]["environment"]
    internal = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"INTERNAL://{env['BRIDGE_KAFKA__BOOTSTRAP_SERVERS']}" in internal
    assert env["BRIDGE_API__ENDPOINT"] == f"http://simulator:{simulator.DEFAULT_PORT}"


def test_bridge_environment_is_valid_settings(compose):
    env = compose["services"]["bridge"]["environment"]
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    assert str(settings.api.dli_url) == env["BRIDGE_API__ENDPOINT"]
    assert settings.auth.mode == "none"
