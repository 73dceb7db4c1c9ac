"""Settings come from a mapping and a TOML file, with every problem reported, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yarl

from bridge import settings
from bridge.errors import ConfigError
from bridge.settings import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PAGE_SIZE,
    Settings,
    dli_endpoint,
    iam_endpoint,
)

NO_AUTH = {"BRIDGE_AUTH__MODE": "none", "BRIDGE_PROJECTS__DISCOVER": "true"}
SECRET = "s3cr3t-VALUE-never-shown"


@pytest.mark.parametrize(
    ("region", "dli", "iam"),
    [
        (
            "ap-southeast-1",
            "https://dli.ap-southeast-1.myhuaweicloud.com",
            "https://iam.ap-southeast-1.myhuaweicloud.com",
        ),
        (
            "cn-north-4",
            "https://dli.cn-north-4.myhuaweicloud.com",
            "https://iam.cn-north-4.myhuaweicloud.com",
        ),
        (
            "eu-west-0",
            "https://dli.eu-west-0.myhuaweicloud.com",
            "https://iam.eu-west-0.myhuaweicloud.com",
        ),
        (
            "eu-west-101",
            "https://dli.eu-west-101.myhuaweicloud.eu",
            "https://iam.eu-west-101.myhuaweicloud.eu",
        ),
    ],
)
def test_endpoint_follows_region_rule(region, dli, iam):
    assert dli_endpoint(region) == yarl.URL(dli)
    assert iam_endpoint(region) == yarl.URL(iam)
    api = Settings.from_env({**NO_AUTH, "BRIDGE_API__REGION": region}).api
    assert (api.dli_url, api.iam_url) == (yarl.URL(dli), yarl.URL(iam))


def test_endpoint_override_wins_over_region():
    env = {
        **NO_AUTH,
        "BRIDGE_API__REGION": "eu-west-101",
        "BRIDGE_API__ENDPOINT": "http://127.0.0.1:8080",
        "BRIDGE_API__IAM_ENDPOINT": "http://127.0.0.1:8081/iam",
    }
    api = Settings.from_env(env).api
    assert api.dli_url == yarl.URL("http://127.0.0.1:8080")
    assert api.iam_url == yarl.URL("http://127.0.0.1:8081/iam")


def test_defaults_are_the_named_constants():
    api = Settings.from_env(NO_AUTH).api
    assert (api.max_in_flight, api.page_size) == (DEFAULT_MAX_IN_FLIGHT, DEFAULT_PAGE_SIZE)


def test_environment_is_read_from_the_given_mapping_only(monkeypatch):
    monkeypatch.setenv("BRIDGE_API__MAX_IN_FLIGHT", "7")
    assert Settings.from_env(NO_AUTH).api.max_in_flight == DEFAULT_MAX_IN_FLIGHT


def test_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("BRIDGE_AUTH__MODE", "none")
    monkeypatch.setenv("BRIDGE_PROJECTS__DISCOVER", "true")
    monkeypatch.setenv("BRIDGE_API__MAX_IN_FLIGHT", "7")
    assert Settings.from_env().api.max_in_flight == 7


def test_nested_values_are_typed():
    env = {
        **NO_AUTH,
        "BRIDGE_API__REQUEST_TIMEOUT_S": "2.5",
        "BRIDGE_API__MAX_IN_FLIGHT": "3",
        "BRIDGE_API__PROJECT_RATE_PER_S": "0.5",
    }
    api = Settings.from_env(env).api
    assert (api.request_timeout_s, api.max_in_flight, api.project_rate_per_s) == (2.5, 3, 0.5)


def test_aksk_credentials_are_secret():
    env = {
        "BRIDGE_AUTH__MODE": "aksk",
        "BRIDGE_AUTH__AK": "AKID",
        "BRIDGE_AUTH__SK": SECRET,
        "BRIDGE_PROJECTS__DISCOVER": "true",
    }
    settings = Settings.from_env(env)
    assert settings.auth.sk is not None
    assert settings.auth.sk.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())


def test_toml_file_is_read_and_environment_wins(tmp_path: Path):
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[api]\nregion = "cn-north-4"\nmax_in_flight = 4\n\n'
        '[auth]\nmode = "token"\nuser = "ops"\npassword = "pw"\ndomain = "acme"\n'
        '[projects]\nids = ["p-1"]\n'
    )
    settings = Settings.from_env({"BRIDGE_API__MAX_IN_FLIGHT": "9"}, toml_path=path)
    assert (settings.api.region, settings.api.max_in_flight) == ("cn-north-4", 9)
    assert (settings.auth.mode, settings.auth.user, settings.auth.domain) == (
        "token",
        "ops",
        "acme",
    )


def test_wrong_config_lists_every_problem_without_secrets():
    env = {
        "BRIDGE_API__REQUEST_TIMEOUT_S": "-1",
        "BRIDGE_API__ENDPOINT": "ftp://dli.example",
        "BRIDGE_AUTH__MODE": "token",
        "BRIDGE_AUTH__USER": "ops",
        "BRIDGE_AUTH__PASSWORD": SECRET,
        "BRIDGE_PROJECTS__IDS": '["p-1"]',
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    error = caught.value
    assert len(error.problems) == 3
    text = str(error)
    for where in ("api.request_timeout_s", "api.endpoint", "auth: mode 'token' needs domain"):
        assert where in text
    assert SECRET not in text
    assert SECRET not in repr(error)
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"BRIDGE_PROJECTS__DISCOVER": "true"}, "auth: mode 'aksk' needs ak, sk"),
        ({"BRIDGE_AUTH__MODE": "kerberos"}, "auth.mode:"),
        ({**NO_AUTH, "BRIDGE_API__PAGE_SIZE": "500"}, "api.page_size:"),
        ({**NO_AUTH, "BRIDGE_API__MAX_IN_FLIGHT": "0"}, "api.max_in_flight:"),
        ({**NO_AUTH, "BRIDGE_API__REGION": "ap southeast"}, "api.region:"),
        ({**NO_AUTH, "BRIDGE_API__TYPO_S": "1"}, "BRIDGE_API__TYPO_S: no such setting"),
    ],
)
def test_invalid_value_is_named(env, problem):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_missing_toml_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        Settings.from_env(NO_AUTH, toml_path=tmp_path / "absent.toml")


def test_broken_toml_file_is_a_config_error(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[api\nregion = ")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        Settings.from_env(NO_AUTH, toml_path=path)


# --- the engine's groups (issue 7 item 1) -------------------------------------------------------

ISSUE_7_EXAMPLE = """\
[api]            # exists: endpoint, iam_endpoint, region, limits…
endpoint = "http://127.0.0.1:8780"
[auth]           # exists: mode = "aksk" | "token" | "none", credentials
mode = "none"
[projects]
ids = ["p-1", "p-2"]          # or: discover = true (every project the credential sees)
[polling]
mode = "list"                 # "detail" | "list" | "sweep"
interval_s = 30.0
transitional_interval_s = 5.0 # jobs in submitting/canceling/savepointing/… states
reconcile_interval_s = 600.0
delete_after_misses = 2
ignore_fields = ["duration"]
[kafka]
bootstrap_servers = "127.0.0.1:9092"
security_protocol = "PLAINTEXT"  # SSL / SASL_PLAINTEXT / SASL_SSL with sasl_* and ssl_* keys
guarantee = "exactly_once"       # or "at_least_once"
transactional_id_prefix = "dli-bridge"
partitions = 12
replication_factor = 1
[kafka.topics]
events = "dli.jobs.events"
state = "dli.jobs.state"
dlq = "dli.jobs.dlq"
[events]
mode = "structured"          # or "binary"
snapshots = "both"           # "after" | "none"
[http]
bind = "127.0.0.1:9464"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_issue_7_example_loads_with_every_value(tmp_path):
    s = Settings.from_env({}, toml_path=write(tmp_path, ISSUE_7_EXAMPLE))
    assert s.api.endpoint == "http://127.0.0.1:8780"
    assert s.auth.mode == "none"
    assert (s.projects.ids, s.projects.discover) == (["p-1", "p-2"], False)
    p = s.polling
    assert (p.mode, p.interval_s, p.transitional_interval_s) == ("list", 30.0, 5.0)
    assert (p.reconcile_interval_s, p.delete_after_misses, p.ignore_fields) == (
        600.0,
        2,
        ["duration"],
    )
    k = s.kafka
    assert (k.bootstrap_servers, k.security_protocol, k.guarantee) == (
        "127.0.0.1:9092",
        "PLAINTEXT",
        "exactly_once",
    )
    assert (k.transactional_id_prefix, k.partitions, k.replication_factor) == ("dli-bridge", 12, 1)
    assert (k.topics.events, k.topics.state, k.topics.dlq) == (
        "dli.jobs.events",
        "dli.jobs.state",
        "dli.jobs.dlq",
    )
    assert (s.events.mode, s.events.snapshots) == ("structured", "both")
    assert (s.http.bind, s.http.host, s.http.port) == ("127.0.0.1:9464", "127.0.0.1", 9464)


def test_issue_7_example_with_discover_instead_of_ids(tmp_path):
    text = ISSUE_7_EXAMPLE.replace('ids = ["p-1", "p-2"]', "discover = true")
    s = Settings.from_env({}, toml_path=write(tmp_path, text))
    assert (s.projects.ids, s.projects.discover) == ([], True)


def test_engine_defaults_are_the_named_constants():
    s = Settings.from_env(NO_AUTH)
    assert s.polling.interval_s == settings.DEFAULT_POLL_INTERVAL_S
    assert s.polling.transitional_interval_s == settings.DEFAULT_TRANSITIONAL_INTERVAL_S
    assert s.polling.reconcile_interval_s == settings.DEFAULT_RECONCILE_INTERVAL_S
    assert s.polling.delete_after_misses == settings.DEFAULT_DELETE_AFTER_MISSES
    assert s.polling.ignore_fields == list(settings.DEFAULT_IGNORE_FIELDS)
    assert (s.polling.jitter_s, s.polling.drain_s) == (1.0, 10.0)
    assert s.kafka.commit_timeout_s == settings.DEFAULT_COMMIT_TIMEOUT_S
    assert s.kafka.max_record_bytes == settings.DEFAULT_MAX_RECORD_BYTES
    assert (s.kafka.group_id, s.kafka.instance_id) == ("dli-bridge", None)
    assert (s.kafka.session_timeout_ms, s.kafka.rebalance_timeout_ms) == (10_000, 30_000)
    assert s.kafka.heartbeat_interval_ms is None  # the membership derives it from the session


def test_a_heartbeat_not_below_the_session_is_refused():
    env = {**NO_AUTH, "BRIDGE_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    assert (
        Settings.from_env(
            env | {"BRIDGE_KAFKA__HEARTBEAT_INTERVAL_MS": "600"}
        ).kafka.heartbeat_interval_ms
        == 600
    )
    with pytest.raises(ConfigError, match=r"heartbeat_interval_ms \(6000\) must be below"):
        Settings.from_env(env | {"BRIDGE_KAFKA__HEARTBEAT_INTERVAL_MS": "6000"})


def test_every_key_comes_from_the_environment_nested_included():
    env = {
        "BRIDGE_AUTH__MODE": "none",
        "BRIDGE_PROJECTS__IDS": '["a", "b"]',
        "BRIDGE_POLLING__MODE": "sweep",
        "BRIDGE_POLLING__INTERVAL_S": "2",
        "BRIDGE_POLLING__IGNORE_FIELDS": '["duration", "/x/y"]',
        "BRIDGE_KAFKA__TOPICS__EVENTS": "e",
        "BRIDGE_KAFKA__GUARANTEE": "at_least_once",
        "BRIDGE_KAFKA__PARTITIONS": "3",
        "BRIDGE_EVENTS__MODE": "binary",
        "BRIDGE_HTTP__BIND": "0.0.0.0:0",
    }
    s = Settings.from_env(env)
    assert s.projects.ids == ["a", "b"]
    assert (s.polling.mode, s.polling.interval_s) == ("sweep", 2.0)
    assert s.polling.ignore_fields == ["duration", "/x/y"]
    assert (s.kafka.topics.events, s.kafka.topics.state) == ("e", "dli.jobs.state")
    assert (s.kafka.guarantee, s.kafka.partitions) == ("at_least_once", 3)
    assert (s.events.mode, s.http.port) == ("binary", 0)


def test_a_whole_group_comes_from_one_json_variable():
    env = {**NO_AUTH, "BRIDGE_KAFKA__TOPICS": '{"events": "e", "state": "s", "dlq": "d"}'}
    assert Settings.from_env(env).kafka.topics.dlq == "d"


@pytest.mark.parametrize(
    ("projects", "problem"),
    [
        ("", "projects: name the projects to watch"),
        ("discover = false", "projects: name the projects to watch"),
        ("ids = []", "projects: name the projects to watch"),
        ('ids = ["p-1"]\ndiscover = true', "projects: set either ids or discover = true"),
        ('ids = ["p-1", "p-2", "p-1"]', "projects: ids lists p-1 more than once"),
        ('ids = [""]', "projects.ids.0: '' must be 1-249 letters"),
        ("ids = [42]", "projects.ids.0: Input should be a valid string"),
        ('ids = "p-1"', "projects.ids: Input should be a valid list"),
    ],
)
def test_projects_need_exactly_one_of_ids_or_discover(tmp_path, projects, problem):
    path = write(tmp_path, f'[auth]\nmode = "none"\n[projects]\n{projects}\n')
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, toml_path=path)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[api]\nrequest_timeout_s = true", "api.request_timeout_s: must be a number, not true"),
        ("[api]\nmax_in_flight = false", "api.max_in_flight: must be a number, not false"),
        ("[polling]\ninterval_s = true", "polling.interval_s: must be a number"),
        ("[polling]\ninterval_s = inf", "polling.interval_s: Input should be a finite number"),
        ("[polling]\ninterval_s = 0", "polling.interval_s: Input should be greater than 0"),
        ("[polling]\nmode = 'often'", "polling.mode: Input should be 'detail', 'list' or 'sweep'"),
        ("[kafka]\npartitions = 0", "kafka.partitions: Input should be greater than or equal"),
        ("[kafka]\nbootstrap_servers = 'kafka'", "kafka.bootstrap_servers: 'kafka' must be"),
        ("[kafka.topics]\nstate = 'dli.jobs.events'", "kafka.topics: events, state and dlq"),
        ("[kafka.topics]\nevents = 'a b'", "kafka.topics.events: 'a b' must be"),
        ("[http]\nbind = '127.0.0.1:70000'", "http.bind: '127.0.0.1:70000' must be HOST:PORT"),
        ("[pollling]\nmode = 'list'", "pollling: unknown key; did you mean polling?"),
        ("[kafka]\ntopcs = {}", "kafka.topcs: unknown key; did you mean kafka.topics?"),
    ],
)
def test_bad_engine_value_is_named(tmp_path, toml, problem):
    path = write(tmp_path, f"{toml}\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(NO_AUTH, toml_path=path)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_numbers_from_the_environment_still_parse_from_strings():
    env = {**NO_AUTH, "BRIDGE_API__REQUEST_TIMEOUT_S": "3", "BRIDGE_KAFKA__PARTITIONS": "4"}
    s = Settings.from_env(env)
    assert (s.api.request_timeout_s, s.kafka.partitions) == (3.0, 4)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"BRIDGE_APII__REGION": "x"}, "BRIDGE_APII__REGION: no such setting; did you mean "),
        ({"BRIDGE_AUTH_MODE": "none"}, "BRIDGE_AUTH_MODE: no such setting; did you mean "),
        ({"BRIDGE_KAFKA__TOPICS__EVNTS": "x"}, "BRIDGE_KAFKA__TOPICS__EVNTS: no such setting"),
        ({"BRIDGE_API__REGION__X": "x"}, "BRIDGE_API__REGION__X: no such setting"),
        ({"BRIDGE_API": "{not json"}, "BRIDGE_API: not valid JSON"),
        ({"BRIDGE_AUTH": ""}, "BRIDGE_AUTH: not valid JSON"),
        ({"BRIDGE_PROJECTS__IDS": "p-1,p-2"}, "BRIDGE_PROJECTS__IDS: not valid JSON"),
    ],
)
def test_environment_mistakes_are_config_errors(extra, problem):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**NO_AUTH, **extra})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_environment_mistakes_are_all_reported_together():
    env = {**NO_AUTH, "BRIDGE_APII__REGION": "x", "BRIDGE_API": "{", "BRIDGE_HTTP__BIND": "x"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert len(caught.value.problems) == 3, caught.value.problems


def test_other_bridge_variables_are_not_settings_problems():
    env = {**NO_AUTH, "BRIDGE_CACHE_DIR": "/c", "BRIDGE_KAFKA_VERSION": "3.9.2", "OTHER": "x"}
    Settings.from_env(env)


def test_group_json_from_environment_is_validated_like_toml():
    env = {**NO_AUTH, "BRIDGE_API": '{"region": "cn-north-4", "max_in_flight": true}'}
    with pytest.raises(ConfigError, match=r"api\.max_in_flight: must be a number"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("kafka", "problem"),
    [
        ({"SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
        (
            {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "PLAIN"},
            "sasl_mechanism PLAIN needs sasl_username, sasl_password",
        ),
        ({"SASL_PASSWORD": SECRET}, "sasl_password need security_protocol SASL_PLAINTEXT"),
        ({"SSL_CAFILE": "/ca.pem"}, "ssl_cafile need security_protocol SSL or SASL_SSL"),
    ],
)
def test_kafka_security_keys_must_fit_the_protocol(kafka, problem):
    env = {**NO_AUTH, **{f"BRIDGE_KAFKA__{k}": v for k, v in kafka.items()}}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert any(p.startswith("kafka: ") and problem in p for p in caught.value.problems)
    assert SECRET not in str(caught.value)


def test_kafka_sasl_password_is_secret():
    env = {
        **NO_AUTH,
        "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "BRIDGE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "BRIDGE_KAFKA__SASL_USERNAME": "bridge",
        "BRIDGE_KAFKA__SASL_PASSWORD": SECRET,
    }
    s = Settings.from_env(env)
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(s)
    assert SECRET not in str(s.model_dump(mode="json"))
