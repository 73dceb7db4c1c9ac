"""The one typed configuration object, built once at the edge from TOML and BRIDGE_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yarl
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from bridge.errors import ConfigError

__all__ = [
    "ApiSettings",
    "AuthSettings",
    "Settings",
    "dli_endpoint",
    "iam_endpoint",
]

ENV_PREFIX = "BRIDGE_"
DEFAULT_REGION = "ap-southeast-1"
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_RETRY_ATTEMPTS = 5
DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_CAP_S = 30.0
DEFAULT_RETRY_AFTER_CAP_S = 60.0
DEFAULT_PROJECT_RATE_PER_S = 5.0
DEFAULT_PROJECT_BURST = 10
DEFAULT_CREDENTIAL_RATE_PER_S = 20.0
DEFAULT_CREDENTIAL_BURST = 40
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_COOLDOWN_S = 30.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 100  # DLI caps `limit` at 100 per call (reference §1.1)

# Huawei Cloud's European site lives under its own top-level domain (reference §3; the
# Python SDK's DliRegion and IamRegion both map eu-west-101 to *.myhuaweicloud.eu).
_EU_SITE_REGIONS = frozenset({"eu-west-101"})


def _domain(region: str) -> str:
    return "myhuaweicloud.eu" if region in _EU_SITE_REGIONS else "myhuaweicloud.com"


def dli_endpoint(region: str) -> yarl.URL:
    """The public DLI endpoint of ``region``."""
    return yarl.URL(f"https://dli.{region}.{_domain(region)}")


def iam_endpoint(region: str) -> yarl.URL:
    """The regional IAM endpoint of ``region``."""
    return yarl.URL(f"https://iam.{region}.{_domain(region)}")


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    url = yarl.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _check_region(value: str) -> str:
    if not value or not all(c.isalnum() or c == "-" for c in value):
        raise ValueError("must be a region id such as ap-southeast-1")
    return value


Url = Annotated[str | None, AfterValidator(_check_url)]
Region = Annotated[str, AfterValidator(_check_region)]


class ApiSettings(BaseModel):
    """How to reach DLI and IAM and how hard we may push them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: Region = DEFAULT_REGION
    endpoint: Url = None
    iam_endpoint: Url = None
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    retry_attempts: int = Field(DEFAULT_RETRY_ATTEMPTS, ge=1)
    retry_base_s: float = Field(DEFAULT_RETRY_BASE_S, ge=0)
    retry_cap_s: float = Field(DEFAULT_RETRY_CAP_S, ge=0)
    retry_after_cap_s: float = Field(DEFAULT_RETRY_AFTER_CAP_S, ge=0)
    project_rate_per_s: float = Field(DEFAULT_PROJECT_RATE_PER_S, gt=0)
    project_burst: int = Field(DEFAULT_PROJECT_BURST, ge=1)
    credential_rate_per_s: float = Field(DEFAULT_CREDENTIAL_RATE_PER_S, gt=0)
    credential_burst: int = Field(DEFAULT_CREDENTIAL_BURST, ge=1)
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)
    breaker_threshold: int = Field(DEFAULT_BREAKER_THRESHOLD, ge=1)
    breaker_cooldown_s: float = Field(DEFAULT_BREAKER_COOLDOWN_S, ge=0)
    page_size: int = Field(DEFAULT_PAGE_SIZE, ge=2, le=MAX_PAGE_SIZE)

    @property
    def dli_url(self) -> yarl.URL:
        """The DLI base URL: the override when set, else the region's public endpoint."""
        return yarl.URL(self.endpoint) if self.endpoint else dli_endpoint(self.region)

    @property
    def iam_url(self) -> yarl.URL:
        """The IAM base URL: the override when set, else the region's IAM endpoint."""
        return yarl.URL(self.iam_endpoint) if self.iam_endpoint else iam_endpoint(self.region)


class AuthSettings(BaseModel):
    """Which credential signs our calls: AK/SK, an IAM password token, or none (simulator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["aksk", "token", "none"] = "aksk"
    ak: str | None = None
    sk: SecretStr | None = None
    security_token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    domain: str | None = None

    @model_validator(mode="after")
    def _credentials_complete(self) -> Self:
        needed = {"aksk": ("ak", "sk"), "token": ("user", "password", "domain")}.get(self.mode, ())
        missing = [name for name in needed if not getattr(self, name)]
        if missing:
            raise ValueError(f"mode {self.mode!r} needs {', '.join(missing)}")
        return self


class _MappingEnvSource(EnvSettingsSource):
    """Environment source over a given mapping, so tests never patch ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class Settings(BaseSettings):
    """Root of the configuration; later groups (kafka, scheduler, http) sit next to these."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    api: ApiSettings = ApiSettings()
    # Validated even when absent, so a missing credential fails at start, not on the first call.
    auth: AuthSettings = Field(default_factory=dict, validate_default=True)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, toml_path: str | Path | None = None
    ) -> Settings:
        """Build from ``environ`` (default ``os.environ``) over an optional TOML file.

        Environment variables win over the file. Raises ConfigError listing every problem.
        """
        sources: list[PydanticBaseSettingsSource] = [
            _MappingEnvSource(cls, os.environ if environ is None else environ)
        ]
        if toml_path is not None:
            sources.append(_toml_source(cls, Path(toml_path)))
        try:
            return cls(_build_sources=(tuple(sources), {}))
        except ValidationError as exc:
            problems = _problems(exc)
        # Raised outside the handler so pydantic's error, whose text echoes input values
        # (secrets included), is neither the cause nor the context of ours.
        raise ConfigError("invalid configuration", problems)


def _toml_source(cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    if not path.is_file():
        raise ConfigError("invalid configuration", [f"config file {path}: not found"])
    try:
        return TomlConfigSettingsSource(cls, toml_file=path)
    except ValueError as exc:  # tomllib.TOMLDecodeError: position only, no values
        problem = f"config file {path}: {exc}"
    raise ConfigError("invalid configuration", [problem])


def _problems(exc: ValidationError) -> list[str]:
    return [_problem(err) for err in exc.errors(include_input=False, include_url=False)]


def _problem(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "settings"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"
