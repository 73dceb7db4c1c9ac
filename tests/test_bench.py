"""`dli-bridge bench` runs end to end on a tiny fleet; its figures are computed as documented."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.bench.report import (
    Row,
    SweepPoint,
    latencies,
    observable,
    percentile,
    table,
    targets,
)
from bridge.bench.run import BridgeSpec, bridge_toml, sample
from bridge.settings import Settings

ROWS = (
    "bare loop",
    "bare paced",
    "sdk loop",
    "sdk paced",
    "bridge detail",
    "bare paced (beside)",
    "sdk paced (beside)",
    "bridge list",
    "bridge sweep",
)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_runs_and_prints_every_row(kafka_bootstrap: str, tmp_path: Path):
    out_json = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bridge", "--log-level", "WARNING", "bench", "--duration", "3"]
    tiny = ["--projects", "2", "--jobs-per-project", "5", "--interval-s", "0.5"]
    small = ["--burst", "10", "--burst-s", "1", "--partitions", "1", "--json", str(out_json)]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    done = subprocess.run(
        [*argv, *tiny, *small], capture_output=True, text=True, env=env, timeout=170, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in ROWS:
        assert any(line.startswith(name) for line in lines), (name, done.stdout)
    assert "targets:" in done.stdout
    report = json.loads(out_json.read_text())
    assert [row["name"] for row in report["rows"]] == list(ROWS)
    for row in report["rows"]:
        assert row["polls_per_s"] > 0, row
        assert row["cpu_us_per_poll"] > 0, row
    bridges = [row for row in report["rows"] if row["name"].startswith("bridge")]
    for row in bridges:
        assert row["requests_per_job_min"] > 0, row
        assert row["rss_mb"] > 0, row
        assert row["changes"] >= row["matched"] >= 0, row
    assert {t["name"] for t in report["targets"]}


def test_list_polls_are_completed_cycles_times_jobs_per_project():
    from bridge.bench.harness import _polls

    before = {
        'dli_bridge_polls_total{mode="list",outcome="ok"}': 10.0,
        'dli_bridge_api_requests_total{endpoint="list",outcome="ok"}': 10.0,
    }
    after = {
        'dli_bridge_polls_total{mode="list",outcome="ok"}': 14.0,
        'dli_bridge_polls_total{mode="list",outcome="error"}': 3.0,
        'dli_bridge_api_requests_total{endpoint="list",outcome="ok"}': 17.0,
    }
    assert _polls("list", before, after, 99.5) == 4 * 99.5
    assert _polls("sweep", before, after, 99.5) == 0
    detail = {'dli_bridge_api_requests_total{endpoint="detail",outcome="ok"}': 7.0}
    assert _polls("detail", {}, detail, 99.5) == 7


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


def test_each_change_matches_the_first_later_event_with_its_status():
    commits = [(("p", 1, "running"), 1_500), (("p", 1, "running"), 3_000), (("p", 2, None), 900)]
    changes = [
        {"project_id": "p", "job_id": 1, "status_after": "running", "at": 1_000},
        {"project_id": "p", "job_id": 1, "status_after": "running", "at": 2_000},
        {"project_id": "p", "job_id": 1, "status_after": "failed", "at": 2_500},  # never seen
        {"project_id": "p", "job_id": 2, "status_after": None, "at": 950},  # event came before
    ]
    assert latencies(changes, commits) == [500.0, 1_000.0]


def test_only_changes_that_stood_a_whole_interval_are_observable():
    changes = [
        {"project_id": "p", "job_id": 1, "status_after": "a", "at": 1_000},  # replaced at 1_500
        {"project_id": "p", "job_id": 1, "status_after": "b", "at": 1_500},  # stood until 9_000
        {"project_id": "p", "job_id": 1, "status_after": "c", "at": 9_000},  # the last one
        {"project_id": "p", "job_id": 2, "status_after": "a", "at": 1_200},  # another job
    ]
    assert [c["at"] for c in observable(changes, 5_000)] == [1_500, 9_000, 1_200]


def test_a_change_replaced_in_the_same_millisecond_is_not_observable():
    changes = [
        {"seq": 2, "project_id": "p", "job_id": 1, "status_after": "b", "at": 1_000},
        {"seq": 1, "project_id": "p", "job_id": 1, "status_after": "a", "at": 1_000},
    ]
    assert [c["seq"] for c in observable(changes, 5_000)] == [2]


def test_targets_judge_detail_cpu_against_the_paced_loops():
    rows = [
        Row("bare loop", 10, 1000.0, 60.0, 0.1),  # flat out: cheaper per request
        Row("bare paced", 10, 10.0, 100.0, 0.001),
        Row("sdk loop", 10, 800.0, 1000.0, 1.0),
        Row("sdk paced", 10, 10.0, 1200.0, 0.01),
        Row("bridge detail", 10, 10.0, 110.0, 0.001, p99_ms=900.0, interval_s=1.0),
    ]
    found = {t.name: t for t in targets(rows, [])}
    detail = found["detail CPU/poll ≤ 1.3 x bare and ≤ 0.1 x SDK"]
    assert detail.met is True
    assert "before it 1.10 x bare (100 µs), 0.092 x SDK (1200 µs)" in detail.figure
    assert "flat out 1.83 x bare (60 µs), 0.110 x SDK (1000 µs)" in detail.figure
    assert found["bridge detail: change-to-commit p99 ≤ interval + 200 ms"].met is True
    assert "bridge detail" in table(rows)
    rows[1] = Row("bare paced", 10, 10.0, 80.0, 0.001)
    assert {t.name: t for t in targets(rows, [])}[detail.name].met is False
    rows[1] = Row("bare paced", 10, 10.0, 100.0, 0.001)
    rows[3] = Row("sdk paced", 10, 10.0, 1000.0, 0.01)
    assert {t.name: t for t in targets(rows, [])}[detail.name].met is False
    no_sdk = [r for r in rows if r.name != "sdk paced"]
    assert {t.name: t for t in targets(no_sdk, [])}[detail.name].met is None


def test_the_detail_verdict_prefers_the_loops_measured_beside_the_bridge():
    rows = [
        Row("bare paced", 10, 10.0, 80.0, 0.001),  # measured earlier, on a faster minute
        Row("sdk paced", 10, 10.0, 1000.0, 0.01),
        Row("bridge detail", 10, 10.0, 110.0, 0.001),
        Row("bare paced (beside)", 10, 10.0, 90.0, 0.001),
        Row("sdk paced (beside)", 10, 10.0, 1150.0, 0.01),
    ]
    name = "detail CPU/poll ≤ 1.3 x bare and ≤ 0.1 x SDK"
    detail = {t.name: t for t in targets(rows, [])}[name]
    assert detail.met is True
    assert detail.figure.startswith("110 µs; beside it 1.22 x bare (90 µs), 0.096 x SDK")
    assert "before it 1.38 x bare (80 µs), 0.110 x SDK (1000 µs)" in detail.figure
    rows[4] = Row("sdk paced (beside)", 10, 10.0, 1000.0, 0.01)
    assert {t.name: t for t in targets(rows, [])}[name].met is False


def test_three_instances_are_judged_against_the_one_measured_beside_them():
    split = [0.33, 0.33, 0.34]
    rows = [
        Row("bridge list", 1000, 200.0, 20.0, 0.004),  # before a burst grew the fleet
        Row("bridge list x1", 1000, 200.0, 30.0, 0.006),
        Row("bridge list x3", 1000, 200.0, 32.0, 0.0064, instances=3, poll_split=split),
    ]
    name = "3 instances: each 33 % ± 10 % of polls, CPU/poll summed ≤ 1.1 x one instance"
    found = {t.name: t for t in targets(rows, [])}[name]
    assert (found.met, found.figure) == (True, "split 33%, 33%, 34%; CPU/poll 1.07 x one")
    older = [rows[0], rows[2]]  # a run without the x1 row: the list row it is
    assert {t.name: t for t in targets(older, [])}[name].met is False


def test_targets_read_the_sweep_for_scale_figures():
    def point(jobs: int, cores: float, mode: str = "list") -> SweepPoint:
        return SweepPoint(jobs, jobs // 200, mode, 30.0, cores, 100.0, 1.5, 0.12, jobs / 30)

    points = [
        point(10_000, 0.01),
        point(50_000, 0.05),
        point(100_000, 0.1),
        point(100_000, 0.05, "sweep"),
    ]
    found = {t.name: t for t in targets([], points)}
    assert found["linear: CPU per job per sweep at 100k ≤ 1.5 x at 10k"].met is True
    assert found["≤ 3 KB resident per tracked job at 50,000 jobs"].met is True
    assert found["list: 100k jobs / 30 s on < 0.2 core, ≤ 0.15 req/job/min"].met is True
    assert found["sweep mode: ≤ 0.03 req/job/min at 100k / 30 s"].met is False


def test_a_bridge_child_config_is_valid_settings(tmp_path: Path):
    spec = BridgeSpec(
        name="abc-list-1",
        mode="list",
        endpoint="http://127.0.0.1:1",
        bootstrap_servers="127.0.0.1:9",
        projects=["p-1", "p-2"],
        interval_s=5.0,
        jitter_s=0.5,
        partitions=3,
    )
    path = tmp_path / "bridge.toml"
    path.write_text(bridge_toml(spec))
    settings = Settings.from_env({}, toml_path=path)
    assert settings.projects.ids == ["p-1", "p-2"]
    assert settings.kafka.topics.events == "bench.abc-list-1.events"
    assert settings.kafka.transactional_id_prefix == "bench-abc-list-1"
    assert (settings.polling.mode, settings.kafka.partitions) == ("list", 3)
    assert settings.kafka.instance_id is None  # a dynamic member unless asked
    path.write_text(bridge_toml(dataclasses.replace(spec, instance_id="abc-0")))
    assert Settings.from_env({}, toml_path=path).kafka.instance_id == "abc-0"


def test_sample_reads_this_process():
    mine = sample(os.getpid())
    assert mine.cpu_s > 0
    assert mine.rss_bytes > 10 * 2**20
