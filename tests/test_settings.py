"""Settings come from a mapping and a TOML file, with every problem reported, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yarl

from bridge.errors import ConfigError
from bridge.settings import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PAGE_SIZE,
    Settings,
    dli_endpoint,
    iam_endpoint,
)

NO_AUTH = {"BRIDGE_AUTH__MODE": "none"}
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
    env = {"BRIDGE_AUTH__MODE": "aksk", "BRIDGE_AUTH__AK": "AKID", "BRIDGE_AUTH__SK": SECRET}
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
        ({}, "auth: mode 'aksk' needs ak, sk"),
        ({"BRIDGE_AUTH__MODE": "kerberos"}, "auth.mode:"),
        ({**NO_AUTH, "BRIDGE_API__PAGE_SIZE": "500"}, "api.page_size:"),
        ({**NO_AUTH, "BRIDGE_API__MAX_IN_FLIGHT": "0"}, "api.max_in_flight:"),
        ({**NO_AUTH, "BRIDGE_API__REGION": "ap southeast"}, "api.region:"),
        ({**NO_AUTH, "BRIDGE_API__TYPO_S": "1"}, "api.typo_s: Extra inputs"),
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
