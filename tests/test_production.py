"""Production safety against a real broker and the simulator: redaction, filters, watermarks,
re-snapshot (issue 11)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from bridge.app import App
from bridge.settings import Settings
from bridge.simulator import SECRETS, jdbc_password
from tests.kafka_fixtures import eventually, unique_name
from tests.test_app import bridge_environ, drive, wait_ready

pytestmark = pytest.mark.integration

HASH_KEY = "test-deployment-key"


async def read_records(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topic`` (read_committed, to the end), undecoded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not assigned:
            return []
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end = await consumer.end_offsets(assigned)
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            while [tp for tp in assigned if await consumer.position(tp) < end[tp]]:
                batches = await consumer.getmany(*assigned, timeout_ms=200)
                for records in batches.values():
                    found += records
        return found
    finally:
        await consumer.stop()


def secret_forms(secrets: Sequence[str]) -> list[bytes]:
    """Each secret as written, unescaped from SQL, and JSON-escaped."""
    forms: set[bytes] = set()
    for secret in secrets:
        for text in {secret, secret.replace("''", "'")}:
            forms.add(text.encode())
            forms.add(orjson.dumps(text)[1:-1])
    return sorted(forms)


def leaks(records: Sequence[ConsumerRecord[bytes, bytes]], forms: Sequence[bytes]) -> list[str]:
    found = []
    for record in records:
        parts = [record.key or b"", record.value or b""]
        parts += [name.encode() + b"=" + value for name, value in record.headers]
        blob = b"\0".join(parts)
        found += [f"{record.topic}@{record.offset}: {f!r}" for f in forms if f in blob]
    return found


def topic_names(settings: Settings) -> list[str]:
    topics = settings.kafka.topics
    return [getattr(topics, name) for name in type(topics).model_fields]


def events_of(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value)["data"] for r in records if r.value is not None]


@pytest.mark.parametrize("mode", ["list", "sweep"])
async def test_no_secret_reaches_any_topic_and_a_changed_password_is_an_update(
    make_simulator, kafka_bootstrap, request, mode
):
    name = unique_name(request, "redact")
    async with make_simulator(projects=2, jobs_per_project=8, seed=3) as (sim, url):
        pid = sim.project_ids[0]
        secret_job = sim.create_job(pid, job_type="flink_opensource_sql_job", variant=0)
        sim.create_job(pid, job_type="flink_jar_job", variant=3)
        environ = bridge_environ(kafka_bootstrap, url, sim.project_ids, name, mode=mode)
        environ["BRIDGE_REDACTION__HASH_KEY"] = HASH_KEY
        settings = Settings.from_env(environ)
        stop = asyncio.Event()
        async with App(settings) as app, asyncio.TaskGroup() as group:
            group.create_task(app.run(stop))
            await wait_ready(app.health_url)
            await drive(sim, seconds=1.5, per_s=4.0)
            sim.update_job(pid, secret_job, secret_rev=1)

            async def updated() -> bool:
                records = await read_records(kafka_bootstrap, settings.kafka.topics.events)
                return any(
                    d["job_id"] == secret_job and d["kind"] == "updated" for d in events_of(records)
                )

            await eventually(updated, timeout_s=20, what="the password change as an update")
            stop.set()
        records = {t: await read_records(kafka_bootstrap, t) for t in topic_names(settings)}
    secrets = [*SECRETS, jdbc_password(1)]
    found = [leak for rs in records.values() for leak in leaks(rs, secret_forms(secrets))]
    assert not found, found
    assert records[settings.kafka.topics.state]
    change = next(
        d
        for d in events_of(records[settings.kafka.topics.events])
        if d["job_id"] == secret_job and d["kind"] == "updated"
    )
    assert "/sql_body" in change["changed"]
    assert "******(h:" in change["after"]["sql_body"]
    assert change["before"]["sql_body"] != change["after"]["sql_body"]
