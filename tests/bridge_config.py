"""The TOML config of a `dli-bridge run` child in the tests: one builder, overrides per test.

Every child polls the simulator at ``base_url`` without auth, on fast test intervals, with
topics, group and transactional ids of the test's own (``name``): no test reads another's
watermarks or re-snapshot requests. A test changes only what it is about::

    write_config(path, bootstrap=..., base_url=..., projects=..., name=..., port=...,
                 polling={"interval_s": 1.0}, kafka={"partitions": 12, "instance_id": "i0"})

An override of ``None`` removes the key (the bridge's default applies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["bridge_config", "merged", "to_toml", "write_config"]

Table = dict[str, Any]


def bridge_config(
    *,
    bootstrap: str,
    base_url: str,
    projects: Sequence[str],
    name: str,
    port: int,
    **overrides: Mapping[str, Any],
) -> Table:
    """The config as nested tables: the common test defaults, then ``overrides`` merged in
    (``polling={...}``, ``kafka={"topics": {...}}``...). ``polling.transitional_interval_s``
    defaults to half the (possibly overridden) ``interval_s``."""
    config: Table = {
        "api": {"endpoint": base_url, "retry_base_s": 0.05, "retry_cap_s": 0.5},
        "auth": {"mode": "none"},
        "projects": {"ids": list(projects)},
        "polling": {
            "mode": "list",
            "interval_s": 0.5,
            "reconcile_interval_s": 1.0,
            "delete_after_misses": 2,
            "jitter_s": 0.05,
            "drain_s": 5.0,
        },
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 3,
            "transactional_id_prefix": name,
            "group_id": name,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 600,  # members learn of a rebalance sooner than by default
            "rebalance_timeout_ms": 10000,
            "topics": {
                topic: f"{name}.{topic}"
                for topic in ("events", "state", "dlq", "watermarks", "signals")
            },
        },
        "http": {"bind": f"127.0.0.1:{port}"},
    }
    _merge(config, overrides)
    polling = config["polling"]
    polling.setdefault("transitional_interval_s", polling["interval_s"] / 2)
    return config


def write_config(
    path: Path,
    *,
    bootstrap: str,
    base_url: str,
    projects: Sequence[str],
    name: str,
    port: int,
    **overrides: Mapping[str, Any],
) -> Path:
    """Write ``bridge_config(...)`` to ``path`` as TOML; return ``path``."""
    config = bridge_config(
        bootstrap=bootstrap,
        base_url=base_url,
        projects=projects,
        name=name,
        port=port,
        **overrides,
    )
    path.write_text(to_toml(config))
    return path


def merged(*layers: Mapping[str, Any]) -> Table:
    """``layers`` of overrides merged, later ones winning, into new tables: one override
    for a caller that has several (a test module's, then one child's)."""
    config: Table = {}
    for layer in layers:
        _merge(config, layer)
    return config


def _merge(into: Table, overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _merge(into[key], value)  # a copy: nothing of ``overrides`` is shared
        elif value is None:
            into.pop(key, None)
        else:
            into[key] = value


def to_toml(config: Mapping[str, Any], prefix: str = "") -> str:
    """Tables of scalars and lists (what a bridge config holds) as TOML text."""
    lines, tables = [], []
    for key, value in config.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    text = "\n".join(lines) + "\n" if lines else ""
    for key, table in tables:
        name = f"{prefix}.{key}" if prefix else key
        text += f"[{name}]\n" + to_toml(table, name)
    return text


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str | list | tuple):
        # JSON strings, numbers and arrays of them are valid TOML
        return orjson.dumps(value).decode()
    raise TypeError(f"no TOML form for {value!r}")
