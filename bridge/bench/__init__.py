"""`dli-bridge bench`: the figures users size a deployment by, against the floor and the SDK.

A subpackage because it is a program of its own beside the product, like the simulator:
``harness`` (one run: the simulator, Kafka, the rows, the sweep), ``run`` (child processes,
/proc and /metrics), ``loops`` (the bare aiohttp and official-SDK loops), ``kafka`` (the events
topic and its read_committed reader), ``report`` (pure: rows, matching, table, targets).
"""

from bridge.bench.harness import DEFAULT_SWEEP_SIZES, MODES, BenchConfig, render, run

__all__ = ["DEFAULT_SWEEP_SIZES", "MODES", "BenchConfig", "render", "run"]
