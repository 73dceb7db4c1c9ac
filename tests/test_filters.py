"""Filters: which jobs are tracked and which event kinds are published, from a list row alone."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.diff import ChangeKind
from bridge.filters import FilterSettings, JobFilter, JobRule, ProjectFilter
from bridge.models import JsonDict


def row(name: object = "orders-etl", queue: str = "q-prod") -> JsonDict:
    return {"job_id": 1, "name": name, "job_type": "flink_sql_job", "queue_name": queue}


@pytest.mark.parametrize(
    ("settings", "the_row", "accepted"),
    [
        ({}, row(), True),
        ({}, {"job_id": 1}, True),
        ({"include_names": ["orders-*"]}, row(), True),
        ({"include_names": ["orders-*"]}, row(name="clicks"), False),
        ({"include_names": ["orders-*"]}, row(name=None), False),
        ({"include_names": ["orders-*"]}, row(name=42), False),
        ({"include_names": ["Orders-*"]}, row(), False),  # case-sensitive, on every OS
        ({"include_names": ["a*", "orders-?tl"]}, row(), True),
        ({"exclude_names": ["*-etl"]}, row(), False),
        ({"exclude_names": ["*-etl"]}, row(name="orders"), True),
        ({"exclude_names": ["*-etl"]}, row(name=None), True),
        ({"include_names": ["orders*"], "exclude_names": ["*-etl"]}, row(), False),
        ({"include_names": ["[!x]rders-etl"]}, row(), True),
        ({"job_types": ["flink_jar_job"]}, row(), False),
        ({"job_types": ["flink_jar_job", "flink_sql_job"]}, row(), True),
        ({"job_types": ["flink_sql_job"]}, {"name": "x"}, False),
        ({"queues": ["q-prod"]}, row(), True),
        ({"queues": ["q-test"]}, row(), False),
        ({"queues": ["q-prod"]}, {"name": "x"}, False),
    ],
)
def test_deployment_rules(settings, the_row, accepted):
    assert JobFilter(FilterSettings(**settings)).accepts_row("p-1", the_row) is accepted


def test_project_overrides_replace_only_the_fields_they_set():
    job_filter = JobFilter(
        FilterSettings(
            include_names=["orders-*"],
            queues=["q-prod"],
            projects={
                "p-2": ProjectFilter(queues=["q-test"]),
                "p-3": ProjectFilter(include_names=[], exclude_names=["tmp-*"]),
            },
        )
    )
    assert job_filter.accepts_row("p-1", row())
    assert not job_filter.accepts_row("p-1", row(queue="q-test"))
    assert job_filter.accepts_row("p-2", row(queue="q-test"))
    assert not job_filter.accepts_row("p-2", row(queue="q-test", name="clicks"))
    assert job_filter.accepts_row("p-3", row(name="clicks"))
    assert not job_filter.accepts_row("p-3", row(name="tmp-1"))
    assert not job_filter.accepts_row("p-3", row(queue="q-test"))


def test_rule_for_a_project_is_resolved_once():
    job_filter = JobFilter(FilterSettings(projects={"p-2": {"job_types": ["flink_jar_job"]}}))
    assert job_filter.rule("p-1") == JobRule()
    assert job_filter.rule("p-2") == JobRule(job_types=frozenset({"flink_jar_job"}))
    assert job_filter.rule("p-1") is job_filter.rule("p-9")


@pytest.mark.parametrize(
    ("kinds", "kind", "published"),
    [
        ([], "updated", True),
        ([], ChangeKind.DELETED, True),
        ([], "snapshot", True),
        ([], "nonsense", False),
        (["status_changed", "deleted"], "status_changed", True),
        (["status_changed", "deleted"], ChangeKind.DELETED, True),
        (["status_changed", "deleted"], "updated", False),
        (["status_changed"], "nonsense", False),
    ],
)
def test_publishes(kinds, kind, published):
    assert JobFilter(FilterSettings(event_kinds=kinds)).publishes(kind) is published


@pytest.mark.parametrize(
    "bad",
    [
        {"event_kinds": ["exploded"]},
        {"unknown": 1},
        {"projects": {"p": {"event_kinds": ["updated"]}}},
        {"include_names": "orders-*"},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        FilterSettings(**bad)


def test_repr():
    assert repr(JobFilter(FilterSettings())) == "<JobFilter projects=0 kinds=all>"
    text = repr(JobFilter(FilterSettings(event_kinds=["updated", "deleted"], projects={"p": {}})))
    assert text == "<JobFilter projects=1 kinds=deleted,updated>"
