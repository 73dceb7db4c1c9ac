"""The pure core's cost per call: diff, row fingerprint, and building + serialising one event.

Run: python tests/bench/bench_core.py [--sql-kb 2] [--repeat 5]
Uses a realistic job detail (the simulator's renderer: job_config, sql_body, execution graph);
prints the best of ``--repeat`` timings in microseconds per call.
"""

from __future__ import annotations

import argparse
import copy
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bridge.diff import diff
from bridge.events import EventOptions, OutRecord, build_event
from bridge.sweep import row_fingerprint


def _detail(sql_kb: int) -> dict[str, Any]:
    return {
        "job_id": 104,
        "name": "orders-enrichment",
        "desc": "joins orders with customers",
        "job_type": "flink_sql_job",
        "status": "job_running",
        "status_desc": "",
        "create_time": 1_740_000_000_000,
        "start_time": 1_740_000_100_000,
        "update_time": 1_740_000_100_000,
        "duration": 123_456,
        "user_id": "u-1",
        "user_name": "ops",
        "queue_name": "flink-q",
        "project_id": "p-1",
        "sql_body": "INSERT INTO sink SELECT * FROM src WHERE x > 1;\n" * (sql_kb * 20),
        "savepoint_path": None,
        "run_mode": "exclusive_cluster",
        "restart_times": 0,
        "has_savepoint": False,
        "execution_graph": '{"nodes":[' + ",".join(f'{{"id":{i}}}' for i in range(40)) + "]}",
        "job_config": {
            "checkpoint_enabled": True,
            "checkpoint_interval": 30,
            "checkpoint_mode": "exactly_once",
            "log_enabled": True,
            "obs_bucket": "bucket",
            "cu_number": 4,
            "parallel_number": 2,
            "manager_cu_number": 1,
            "restart_when_exception": True,
            "resume_max_num": 5,
            "tm_cus": 1,
            "tm_slot_num": 2,
            "flink_version": "1.15",
            "dependency_jars": ["obs://bucket/a.jar", "obs://bucket/b.jar"],
        },
    }


def _us(func: Callable[[], object], repeat: int) -> float:
    number = 2000
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sql-kb", type=int, default=2, help="size of sql_body in KiB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    before = _detail(args.sql_kb)
    same = copy.deepcopy(before)
    same["duration"] += 30_000  # volatile: no change
    moved = copy.deepcopy(before)
    moved["status"] = "job_canceling"
    change = diff(before, moved)
    assert change is not None
    t1 = datetime(2025, 3, 1, tzinfo=UTC)

    def event(mode: Literal["structured", "binary"]) -> Callable[[], OutRecord]:
        options = EventOptions(region="cn-north-4", mode=mode)
        return lambda: build_event(
            change,
            project_id="p-1",
            job_id=104,
            job_name="orders-enrichment",
            sequence=42,
            observed_at=t1,
            previous_observed_at=t1 - timedelta(seconds=30),
            options=options,
        )

    cases: list[tuple[str, Callable[[], object]]] = [
        ("diff, no change (duration only)", lambda: diff(before, same)),
        ("diff, status change", lambda: diff(before, moved)),
        ("row_fingerprint", lambda: row_fingerprint(before)),
        ("build_event + serialise, structured", event("structured")),
        ("build_event + serialise, binary", event("binary")),
    ]
    record = event("structured")()
    print(f"snapshot sql_body {args.sql_kb} KiB; structured event {len(record.value or b'')} B")
    for name, func in cases:
        print(f"{name:40s} {_us(func, args.repeat):8.2f} µs/call")


if __name__ == "__main__":
    main()
