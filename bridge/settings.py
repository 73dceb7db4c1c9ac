"""The one typed configuration object, built once at the edge from TOML and BRIDGE_* variables."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, get_origin

import orjson
import yarl
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
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
from bridge.filters import FilterSettings
from bridge.redact import RedactionSettings

__all__ = [
    "CACHE_DIR_ENV",
    "ENV_PREFIX",
    "KAFKA_VERSION_ENV",
    "ApiSettings",
    "AuthSettings",
    "EventsSettings",
    "HttpSettings",
    "KafkaSettings",
    "PollingSettings",
    "ProjectsSettings",
    "Settings",
    "TopicsSettings",
    "dli_endpoint",
    "iam_endpoint",
]

ENV_PREFIX: Final = "BRIDGE_"
# BRIDGE_* names read outside Settings (the local broker's tooling), so not "unknown" to it.
CACHE_DIR_ENV: Final = "BRIDGE_CACHE_DIR"
KAFKA_VERSION_ENV: Final = "BRIDGE_KAFKA_VERSION"
_OTHER_ENV_NAMES: Final = frozenset({CACHE_DIR_ENV, KAFKA_VERSION_ENV})

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

DEFAULT_POLL_INTERVAL_S = 30.0
DEFAULT_TRANSITIONAL_INTERVAL_S = 5.0
DEFAULT_RECONCILE_INTERVAL_S = 600.0
# One miss is enough: the detail call that confirms a delete is the authority (DLI.16001),
# so a flaky list costs a detail call, never a false delete; a second miss only delayed it.
DEFAULT_DELETE_AFTER_MISSES = 1
DEFAULT_IGNORE_FIELDS: Final = ("duration",)  # = diff.DEFAULT_IGNORE; settings stay import-light
DEFAULT_JITTER_S = 1.0
DEFAULT_FLUSH_AFTER_S = 0.1  # a found change waits at most this long for its cycle (plus a write)
DEFAULT_DRAIN_S = 10.0

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_TRANSACTIONAL_ID_PREFIX = "dli-bridge"
DEFAULT_PARTITIONS = 12
DEFAULT_REPLICATION_FACTOR = 1
DEFAULT_COMMIT_TIMEOUT_S = 30.0
DEFAULT_MAX_RECORD_BYTES = 1_000_000  # Kafka's default message.max.bytes is 1,048,588
DEFAULT_GROUP_ID = "dli-bridge"
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_REBALANCE_TIMEOUT_MS = 30_000
DEFAULT_EVENTS_TOPIC = "dli.jobs.events"
DEFAULT_STATE_TOPIC = "dli.jobs.state"
DEFAULT_DLQ_TOPIC = "dli.jobs.dlq"
DEFAULT_WATERMARKS_TOPIC = "dli.jobs.watermarks"
DEFAULT_SIGNALS_TOPIC = "dli.jobs.signals"

DEFAULT_HTTP_BIND = "127.0.0.1:9464"

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


_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")

# --- field types --------------------------------------------------------------------------------


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


def _not_a_bool(value: object) -> object:
    # pydantic's lax mode reads true as 1; a switch where a number belongs is a mistake.
    # Strict mode would also refuse the numeric strings every environment variable is.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def _split_port(value: str, *, lowest: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"{value!r} must be HOST:PORT with a port from {lowest} to 65535")
    return host.strip("[]"), int(port)


def _check_servers(value: str) -> str:
    for server in value.split(","):
        _split_port(server.strip(), lowest=1)
    return value


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} must be 1-249 letters, digits, '.', '_' or '-'")
    return value


def _check_bind(value: str) -> str:
    _split_port(value, lowest=0)
    return value


Url = Annotated[str | None, AfterValidator(_check_url)]
Region = Annotated[str, AfterValidator(_check_region)]
Number = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
Count = Annotated[int, BeforeValidator(_not_a_bool)]
# Kafka's own rule for topic names; project, group and transactional ids share it for safety
# in URLs, logs and metric labels.
Name = Annotated[str, AfterValidator(_check_name)]
Servers = Annotated[str, AfterValidator(_check_servers)]
Bind = Annotated[str, AfterValidator(_check_bind)]

_GROUP = ConfigDict(extra="forbid", frozen=True)


# --- groups -------------------------------------------------------------------------------------


class ApiSettings(BaseModel):
    """How to reach DLI and IAM and how hard we may push them."""

    model_config = _GROUP

    region: Region = DEFAULT_REGION
    endpoint: Url = None
    iam_endpoint: Url = None
    request_timeout_s: Number = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    retry_attempts: Count = Field(DEFAULT_RETRY_ATTEMPTS, ge=1)
    retry_base_s: Number = Field(DEFAULT_RETRY_BASE_S, ge=0)
    retry_cap_s: Number = Field(DEFAULT_RETRY_CAP_S, ge=0)
    retry_after_cap_s: Number = Field(DEFAULT_RETRY_AFTER_CAP_S, ge=0)
    project_rate_per_s: Number = Field(DEFAULT_PROJECT_RATE_PER_S, gt=0)
    project_burst: Count = Field(DEFAULT_PROJECT_BURST, ge=1)
    credential_rate_per_s: Number = Field(DEFAULT_CREDENTIAL_RATE_PER_S, gt=0)
    credential_burst: Count = Field(DEFAULT_CREDENTIAL_BURST, ge=1)
    max_in_flight: Count = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)
    breaker_threshold: Count = Field(DEFAULT_BREAKER_THRESHOLD, ge=1)
    breaker_cooldown_s: Number = Field(DEFAULT_BREAKER_COOLDOWN_S, ge=0)
    page_size: Count = Field(DEFAULT_PAGE_SIZE, ge=2, le=MAX_PAGE_SIZE)

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

    model_config = _GROUP

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


class ProjectsSettings(BaseModel):
    """Which projects to watch: the listed ``ids``, or every project the credential sees."""

    model_config = _GROUP

    ids: list[Name] = []
    discover: bool = False

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if self.ids and self.discover:
            raise ValueError("set either ids or discover = true, not both")
        if not self.ids and not self.discover:
            raise ValueError(
                'name the projects to watch: ids = ["<project id>", ...] or discover = true'
            )
        repeated = sorted({pid for pid in self.ids if self.ids.count(pid) > 1})
        if repeated:
            raise ValueError(f"ids lists {', '.join(repeated)} more than once")
        return self


class PollingSettings(BaseModel):
    """How often and how the engine asks DLI (issue 7 "Modes")."""

    model_config = _GROUP

    mode: Literal["detail", "list", "sweep"] = "list"
    interval_s: Number = Field(DEFAULT_POLL_INTERVAL_S, gt=0)
    transitional_interval_s: Number = Field(DEFAULT_TRANSITIONAL_INTERVAL_S, gt=0)
    reconcile_interval_s: Number = Field(DEFAULT_RECONCILE_INTERVAL_S, gt=0)
    delete_after_misses: Count = Field(DEFAULT_DELETE_AFTER_MISSES, ge=1)
    ignore_fields: list[str] = list(DEFAULT_IGNORE_FIELDS)
    jitter_s: Number = Field(DEFAULT_JITTER_S, ge=0)
    # a change found mid-cycle waits at most this long for the cycle's other detail calls
    flush_after_s: Number = Field(DEFAULT_FLUSH_AFTER_S, ge=0)
    drain_s: Number = Field(DEFAULT_DRAIN_S, ge=0)


class TopicsSettings(BaseModel):
    """The topic names; they must differ (the state topic is compacted, events never)."""

    model_config = _GROUP

    events: Name = DEFAULT_EVENTS_TOPIC
    state: Name = DEFAULT_STATE_TOPIC
    dlq: Name = DEFAULT_DLQ_TOPIC
    watermarks: Name = DEFAULT_WATERMARKS_TOPIC  # per-project "observed through" (issue 11)
    signals: Name = DEFAULT_SIGNALS_TOPIC  # re-snapshot requests (issue 11)

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if len({self.events, self.state, self.dlq}) < 3:
            raise ValueError("events, state and dlq must be three different topics")
        names = (self.events, self.state, self.dlq, self.watermarks, self.signals)
        if len(set(names)) < len(names):
            raise ValueError("events, state, dlq, watermarks and signals must all differ")
        return self


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]


class KafkaSettings(BaseModel):
    """The Kafka cluster, how we write to it, and the consumer group that spreads shards."""

    model_config = _GROUP

    bootstrap_servers: Servers = DEFAULT_BOOTSTRAP_SERVERS
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    transactional_id_prefix: Name = DEFAULT_TRANSACTIONAL_ID_PREFIX
    partitions: Count = Field(DEFAULT_PARTITIONS, ge=1)
    replication_factor: Count = Field(DEFAULT_REPLICATION_FACTOR, ge=1)
    commit_timeout_s: Number = Field(DEFAULT_COMMIT_TIMEOUT_S, gt=0)
    max_record_bytes: Count = Field(DEFAULT_MAX_RECORD_BYTES, ge=1024)
    group_id: Name = DEFAULT_GROUP_ID
    instance_id: Name | None = None
    session_timeout_ms: Count = Field(DEFAULT_SESSION_TIMEOUT_MS, ge=1)
    # None: a third of the session, at most 3 s (Kafka's default)
    heartbeat_interval_ms: Count | None = Field(None, ge=1)
    rebalance_timeout_ms: Count = Field(DEFAULT_REBALANCE_TIMEOUT_MS, ge=1)
    topics: TopicsSettings = TopicsSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = [*_security_problems(self), *_group_problems(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _group_problems(kafka: KafkaSettings) -> Iterator[str]:
    heartbeat = kafka.heartbeat_interval_ms
    if heartbeat is not None and heartbeat >= kafka.session_timeout_ms:
        yield (
            f"heartbeat_interval_ms ({heartbeat}) must be below session_timeout_ms "
            f"({kafka.session_timeout_ms})"
        )


def _security_problems(kafka: KafkaSettings) -> Iterator[str]:
    sasl = kafka.security_protocol.startswith("SASL_")
    ssl = kafka.security_protocol.endswith("SSL")
    sasl_keys = [
        k for k in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(kafka, k)
    ]
    ssl_keys = [k for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(kafka, k)]
    if sasl_keys and not sasl:
        yield f"{', '.join(sasl_keys)} need security_protocol SASL_PLAINTEXT or SASL_SSL"
    if ssl_keys and not ssl:
        yield f"{', '.join(ssl_keys)} need security_protocol SSL or SASL_SSL"
    if sasl and kafka.sasl_mechanism is None:
        yield f"security_protocol {kafka.security_protocol} needs sasl_mechanism"
    if kafka.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        missing = [k for k in ("sasl_username", "sasl_password") if not getattr(kafka, k)]
        if missing:
            yield f"sasl_mechanism {kafka.sasl_mechanism} needs {', '.join(missing)}"


class EventsSettings(BaseModel):
    """How events are laid out in Kafka (CloudEvents structured or binary mode)."""

    model_config = _GROUP

    mode: Literal["structured", "binary"] = "structured"
    snapshots: Literal["both", "after", "none"] = "both"


class HttpSettings(BaseModel):
    """Where /healthz, /readyz and /metrics listen: ``host:port``, port 0 = any free port."""

    model_config = _GROUP

    bind: Bind = DEFAULT_HTTP_BIND

    @property
    def host(self) -> str:
        return _split_port(self.bind, lowest=0)[0]

    @property
    def port(self) -> int:
        return _split_port(self.bind, lowest=0)[1]


# --- the root and its sources -------------------------------------------------------------------


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
    """Root of the configuration: one group per concern, each a frozen model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    api: ApiSettings = ApiSettings()
    # Validated even when absent, so a missing credential (or project list) fails at start,
    # not on the first call.
    auth: AuthSettings = Field(default_factory=dict, validate_default=True)
    projects: ProjectsSettings = Field(default_factory=dict, validate_default=True)
    polling: PollingSettings = PollingSettings()
    kafka: KafkaSettings = KafkaSettings()
    events: EventsSettings = EventsSettings()
    http: HttpSettings = HttpSettings()
    redaction: RedactionSettings = RedactionSettings()
    filters: FilterSettings = FilterSettings()

    def masked_json(self) -> str:
        """The effective configuration as indented JSON; every secret reads ``**********``."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, toml_path: str | Path | None = None
    ) -> Settings:
        """Build from ``environ`` (default ``os.environ``) over an optional TOML file.

        Environment variables win over the file. Raises ConfigError listing every problem:
        unknown ``BRIDGE_*`` names and unparsable JSON values included.
        """
        problems, usable = _screen_environ(os.environ if environ is None else environ)
        sources: list[PydanticBaseSettingsSource] = [_MappingEnvSource(cls, usable)]
        if toml_path is not None:
            toml = _toml_source(cls, Path(toml_path))
            if isinstance(toml, str):  # without the file every other message would mislead
                raise ConfigError("invalid configuration", [*problems, toml])
            sources.append(toml)
        try:
            settings = cls(_build_sources=(tuple(sources), {}))
        except ValidationError as exc:
            problems += _problems(exc)
        except ValueError as exc:  # pydantic-settings' SettingsError; names the field only
            problems.append(str(exc))
        else:
            if not problems:
                return settings
        # Raised outside the handler so pydantic's error, whose text echoes input values
        # (secrets included), is neither the cause nor the context of ours.
        raise ConfigError("invalid configuration", problems)


def _toml_source(cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource | str:
    """The file's source, or the one problem that makes it unusable."""
    if not path.is_file():
        return f"config file {path}: not found"
    try:
        return TomlConfigSettingsSource(cls, toml_file=path)
    except ValueError as exc:  # tomllib.TOMLDecodeError: position only, no values
        return f"config file {path}: {exc}"
    except OSError as exc:
        return f"config file {path}: cannot be read ({exc.strerror})"


def _problems(exc: ValidationError) -> list[str]:
    return [_problem(err) for err in exc.errors(include_input=False, include_url=False)]


def _problem(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "settings"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key{_did_you_mean(where, _setting_paths(Settings, '', '.'))}"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


# --- environment screening ----------------------------------------------------------------------


def _screen_environ(environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Split ``environ`` into problems and the variables safe to hand to pydantic-settings.

    pydantic-settings ignores a ``BRIDGE_*`` name that matches no field (a typo goes
    unnoticed) and stops at the first value that is not JSON where JSON is needed.
    """
    problems: list[str] = []
    usable: dict[str, str] = {}
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _OTHER_ENV_NAMES:
            continue
        target = _env_target(upper.removeprefix(ENV_PREFIX).lower().split("__"))
        if target is None:
            names = _setting_paths(Settings, ENV_PREFIX, "__")
            problems.append(f"{name}: no such setting{_did_you_mean(upper, names)}")
        elif _is_structured(target) and not _is_json(value):
            problems.append(f"{name}: not valid JSON (a group, list or table needs JSON here)")
        else:
            usable[name] = value
    return problems, usable


def _env_target(parts: list[str]) -> Any:
    """The annotation ``BRIDGE_<A>__<B>...`` sets, or None when no such setting exists."""
    model: Any = Settings
    annotation: Any = None
    for part in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = model = field.annotation
    return annotation


def _is_structured(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return get_origin(annotation) in (list, dict)


def _is_json(value: str) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def _setting_paths(model: type[BaseModel], prefix: str, sep: str) -> list[str]:
    """Every group and key name, spelt as environment variables or dotted TOML paths."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name.upper() if sep == '__' else name}"
        paths.append(path)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _setting_paths(annotation, path + sep, sep)
    return paths


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""
