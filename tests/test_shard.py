"""ShardRunner: the generation it stamps on state records, normally and after a group reset."""

from datetime import UTC, datetime

from bridge import events
from bridge.shard import ShardRunner
from bridge.sink import Batch, MemorySink

AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def record(sequence: int, generation: int) -> events.OutRecord:
    return events.state_record(
        project_id="p-1",
        job_id=104,
        sequence=sequence,
        snapshot=b'{"job_id":104}',
        fingerprint=b"f" * 16,
        row_fingerprint=None,
        observed_at=AT,
        generation=generation,
    )


async def write_as(sink: MemorySink, generation: int, sequence: int) -> None:
    writer, _ = await sink.open_shard(0, generation)
    await writer.write(Batch(state=[record(sequence, generation)]))


async def restored_sequence(sink: MemorySink) -> int:
    _, restored = await sink.open_shard(0, 99)
    assert restored is not None
    return restored[b"p-1/104"].sequence


async def test_stamp_is_the_group_generation_when_the_partition_holds_older_ones():
    sink = MemorySink(partitions=1)
    await write_as(sink, generation=3, sequence=1)
    runner = ShardRunner(0, 5, ["p-1"], sink)
    assert await runner.ensure_open()
    assert runner.stamp == 5


async def test_stamp_moves_past_a_newer_partition_generation_after_a_group_reset():
    """Kafka deleted the group (every member gone past its retention): generations restart
    at 1, but the partition holds stamps up to 7. Stamping 1 would make restore ignore every
    record written from now on; the runner stamps 8 instead, and its writes are restored."""
    sink = MemorySink(partitions=1)
    await write_as(sink, generation=7, sequence=1)
    runner = ShardRunner(0, 1, ["p-1"], sink)
    assert await runner.ensure_open()
    assert runner.stamp == 8
    assert await runner.write(runner.epoch, Batch(state=[record(2, runner.stamp)]))
    assert await restored_sequence(sink) == 2


async def test_a_stale_stamp_is_still_ignored_on_restore():
    sink = MemorySink(partitions=1)
    await write_as(sink, generation=4, sequence=5)
    await write_as(sink, generation=3, sequence=6)  # a stale owner writing late
    assert await restored_sequence(sink) == 5
