"""docker-compose.yml parses and agrees with the code (names, ports, config, Kafka version)."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import localkafka, simulator, tail
from bridge.cli import build_parser
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def bridge_settings(compose, tmp_path_factory) -> Settings:
    """The bridge's mounted config file, loaded exactly as `dli-bridge run --config` does."""
    path = tmp_path_factory.mktemp("compose") / "config.toml"
    path.write_text(compose["configs"]["bridge-config"]["content"])
    return Settings.from_env({}, toml_path=path)


def host_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def parsed(command: list[str]) -> Any:
    assert command[0] == "dli-bridge"
    return build_parser().parse_args(command[1:])


def internal_kafka(compose) -> str:
    """host:port other services reach the broker on (the INTERNAL listener)."""
    listeners: str = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    return next(x for x in listeners.split(",") if x.startswith("INTERNAL://"))[11:]


def test_services_are_kafka_simulator_bridge_and_a_tail(compose):
    assert set(compose["services"]) == {"kafka", "simulator", "bridge", "tail"}


def test_every_service_runs_by_default(compose):
    """`docker compose up` is the whole demo: no service hides behind a profile."""
    assert not any("profiles" in service for service in compose["services"].values())


def test_kafka_is_the_official_image_at_the_default_version(compose):
    image = compose["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{localkafka.DEFAULT_KAFKA_VERSION}"


def test_kafka_runs_kraft_single_node(compose):
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 1
    assert "PLAINTEXT://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert 9092 in host_ports(compose["services"]["kafka"])


def test_host_tail_default_reaches_the_published_broker(compose):
    """`dli-bridge tail` with no flags on the host reads the compose stack's broker."""
    host, port = tail.DEFAULT_BOOTSTRAP_SERVERS.split(":")
    assert int(port) in host_ports(compose["services"]["kafka"])
    assert host in ("127.0.0.1", "localhost")


def test_simulator_command_parses_with_our_cli_and_publishes_its_port(compose):
    service = compose["services"]["simulator"]
    args = parsed(service["command"])
    assert args.command == "simulate"
    assert args.port == simulator.DEFAULT_PORT
    assert args.host == "0.0.0.0"
    assert host_ports(service) == {simulator.DEFAULT_PORT}


def test_bridge_runs_with_the_mounted_config(compose):
    service = compose["services"]["bridge"]
    args = parsed(service["command"])
    assert args.command == "run"
    mounts = {m["source"]: m["target"] for m in service["configs"]}
    assert mounts == {"bridge-config": args.config}
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_bridge_config_is_valid_and_points_at_the_compose_services(compose, bridge_settings):
    assert bridge_settings.kafka.bootstrap_servers == internal_kafka(compose)
    assert str(bridge_settings.api.dli_url) == f"http://simulator:{simulator.DEFAULT_PORT}"
    assert str(bridge_settings.api.iam_url) == f"http://simulator:{simulator.DEFAULT_PORT}"
    assert bridge_settings.auth.mode == "none"
    # the simulator's project ids are generated: the bridge finds them through IAM
    assert bridge_settings.projects.discover


def test_bridge_publishes_its_http_port_on_every_interface(compose, bridge_settings):
    # inside a container, 127.0.0.1 would be unreachable through the published port
    assert bridge_settings.http.host == "0.0.0.0"
    assert host_ports(compose["services"]["bridge"]) == {bridge_settings.http.port}
    probe = " ".join(compose["services"]["bridge"]["healthcheck"]["test"])
    assert f":{bridge_settings.http.port}/readyz" in probe


def test_tail_reads_the_bridge_events_topic_on_the_internal_listener(compose, bridge_settings):
    args = parsed(compose["services"]["tail"]["command"])
    assert args.command == "tail"
    assert args.bootstrap_servers == internal_kafka(compose)
    assert (args.topic or tail.DEFAULT_TOPIC) == bridge_settings.kafka.topics.events
