"""The `dli-bridge` command line: one subcommand per thing a user runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bridge import __version__, logs
from bridge.errors import BridgeError, ConfigError, LocalKafkaError

Command = Callable[[argparse.Namespace], int]
T = TypeVar("T")

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

EXIT_UNAVAILABLE = 1  # Kafka, DLI or the group could not be used: try again later
EXIT_CONFIG = 2  # the configuration (or the command line) is wrong: fix it first


async def run_until_signalled(work: Awaitable[None], *, quiet: bool = False) -> None:
    """Await ``work`` until it ends or SIGINT/SIGTERM cancels it; a signal ends it cleanly.

    A second signal cancels the clean-up too. Other cancellations propagate. Every
    command that runs until Ctrl-C goes through here. Services log the signal that stopped
    them; ``quiet`` commands (tail, demo: their output is the screen) log it at DEBUG only.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("run_until_signalled() must run inside an asyncio task")
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        task.cancel()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await work
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        log.log(logging.DEBUG if quiet else logging.INFO, "stopped on %s", received[0].name)
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def serve_until_signalled(
    resource: contextlib.AbstractAsyncContextManager[T], announce: Callable[[T], None]
) -> None:
    """Enter ``resource``, ``announce`` what it yields, and hold it until SIGINT or SIGTERM.

    A signal cancels whatever is under way, start-up included, and the resource is left
    through its own ``__aexit__``; a second signal cancels that exit too (LocalKafka then
    kills the JVM at once). Only a signal ends this quietly: other cancellations propagate.
    """

    async def hold() -> None:
        async with resource as value:
            announce(value)
            await asyncio.get_running_loop().create_future()  # forever: only a signal ends it

    await run_until_signalled(hold())


# --- local-kafka (owner: localkafka) -------------------------------------------------------


def _add_local_kafka(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "local-kafka",
        help="run a local single-node Kafka broker (foreground)",
        description="Run a real single-node Kafka (KRaft) broker on 127.0.0.1, built from "
        "Maven Central jars cached per version; prints 'bootstrap: HOST:PORT' when ready "
        "and stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--kafka-version",
        help="Kafka version, 3.3 or newer, e.g. 4.1.2 (default: $BRIDGE_KAFKA_VERSION or 3.9.2)",
    )
    p.add_argument(
        "--port", type=port_number, help="client port, 0-65535 (default or 0: a free one)"
    )
    p.add_argument(
        "--cache-dir", help="jar cache (default: $BRIDGE_CACHE_DIR or ~/.cache/dli-bridge)"
    )
    p.add_argument("--heap-mb", type=int, default=512, help="JVM heap in MiB (default: 512)")
    p.add_argument("--java", help="the java executable (default: $JAVA_HOME/bin/java, or PATH)")
    p.add_argument("--mvn", help="the mvn executable (default: $MAVEN_HOME/bin/mvn, or PATH)")
    p.set_defaults(func=_cmd_local_kafka)


def port_number(text: str) -> int:
    """argparse type for a TCP port: an integer from 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a number from 0 to 65535")
    return port


def _cmd_local_kafka(args: argparse.Namespace) -> int:
    from pathlib import Path

    # imported here: aiokafka makes `dli-bridge --help` and the other commands slower
    from bridge.localkafka import LocalKafka, default_kafka_version

    kafka = LocalKafka(
        args.kafka_version or default_kafka_version(),
        port=args.port or None,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        heap_mb=args.heap_mb,
        java=args.java,
        mvn=args.mvn,
    )

    def announce(broker: LocalKafka) -> None:
        print(f"bootstrap: {broker.bootstrap_servers}", flush=True)

    asyncio.run(serve_until_signalled(kafka, announce))
    return 0


# --- run (owner: engine) -------------------------------------------------------------------


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="poll DLI and publish job changes to Kafka (foreground)",
        description="Read FILE and the BRIDGE_* environment, then poll every configured "
        "project and publish each job change to Kafka until SIGINT or SIGTERM; on a signal "
        "in-flight cycles get polling.drain_s to commit, then it exits 0. An invalid "
        "configuration lists every problem and exits 2.",
        epilog="exit status: 0 stopped by SIGINT/SIGTERM after the drain; 1 unavailable: "
        "Kafka, DLI or the consumer group could not be used (one line names what and why; "
        "start again once it is back); 2 invalid configuration (fix it first).",
    )
    p.add_argument("--config", metavar="FILE", required=True, help="the TOML configuration file")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=logs.LEVELS,
        default=argparse.SUPPRESS,
        help="as the global --log-level",
    )
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    # imported here: aiokafka makes `dli-bridge --help` and the other commands slower
    from bridge.app import run
    from bridge.settings import Settings

    asyncio.run(run(Settings.from_env(toml_path=args.config)))
    return 0


# --- resnapshot (owner: production safety) --------------------------------------------------


def _add_resnapshot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resnapshot",
        help="ask the bridge for a snapshot event per job",
        description="Write a re-snapshot request to the signals topic (kafka.topics.signals). "
        "The bridge instance owning the project's shard answers with one `snapshot` event per "
        "live job (its current, redacted state, in the job's normal sequence), then a "
        "watermark. The same --request-id is answered once.",
    )
    p.add_argument("--project", required=True, help="the project id")
    p.add_argument("--job", type=int, help="only this job id")
    p.add_argument("--request-id", help="idempotency key (default: a new random id)")
    p.add_argument("--config", metavar="FILE", help="a dli-bridge TOML config (Kafka, topics)")
    p.add_argument("--bootstrap-servers", help="Kafka (default: the config's, else local)")
    p.set_defaults(func=_cmd_resnapshot)


def _cmd_resnapshot(args: argparse.Namespace) -> int:
    from bridge.settings import KafkaSettings, Settings
    from bridge.signals import SnapshotRequest, send_request

    kafka = Settings.from_env(toml_path=args.config).kafka if args.config else KafkaSettings()
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    request = SnapshotRequest.new(args.project, args.job, args.request_id)
    asyncio.run(send_request(kafka, request))
    print(f"requested {request.request_id} on {kafka.topics.signals}")
    return 0


# --- check-config (owner: settings) ---------------------------------------------------------


def _add_check_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a config file, print the effective config",
        description="Read FILE and the BRIDGE_* environment exactly as `dli-bridge run` does. "
        "Prints the effective configuration as JSON (secrets masked) and exits 0, or lists "
        "every problem at once and exits 2.",
    )
    p.add_argument("file", metavar="FILE", help="the TOML configuration file")
    p.set_defaults(func=_cmd_check_config)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.settings import Settings

    _print_line(Settings.from_env(toml_path=args.file).masked_json())
    return 0


# --- schemas (owner: schemas) ---------------------------------------------------------------


def _add_schemas(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schemas",
        help="write or check the JSON Schemas of what is published",
        description="export: write schemas/<name>/v<N>.json from the wire models. check: exit "
        "0 when every file equals what the models produce, else 1 naming each drifted file.",
    )
    p.add_argument("action", choices=["export", "check"])
    p.add_argument("--dir", default="schemas", help="schema directory (default: ./schemas)")
    p.set_defaults(func=_cmd_schemas)


def _cmd_schemas(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bridge import schemas

    root = Path(args.dir)
    if args.action == "export":
        for path in schemas.export(root):
            print(path)
        return 0
    problems = schemas.check(root)
    for problem in problems:
        print(f"dli-bridge schemas check: {problem}", file=sys.stderr)
    return 1 if problems else 0


# --- simulate (owner: simulator) -----------------------------------------------------------


# = bridge.simulator.DEFAULT_PORT, kept literal so the CLI starts without importing aiohttp;
# tests/test_compose.py holds the two together.
_SIMULATOR_PORT = 8780
# = bridge.simulator.records.MAX_CHANGE_RATE and MAX_LATENCY_S (tests/test_simulator.py).
_SIM_MAX_CHANGE_RATE = 10_000.0
_SIM_MAX_LATENCY_MS = 60_000.0


def _sim_number(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """argparse type for a finite number in [low, high] ((low, high] with ``low_open``)."""
    if math.isinf(high):
        span = f"above {low:g}" if low_open else f"of at least {low:g}"
    else:
        span = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a number {span}")
        return value

    return parse


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="serve a simulated DLI + IAM API (foreground)",
        description="Serve a seeded, simulated Huawei Cloud DLI Flink job API and IAM on one "
        "base URL; prints 'simulator: URL' when ready and runs until Ctrl-C or SIGTERM. "
        "Without --ak/--user every call is accepted unauthenticated.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        "--port",
        type=port_number,
        default=_SIMULATOR_PORT,
        help="port, 0-65535 (default: 8780; 0 = a free one)",
    )
    p.add_argument("--projects", type=int, default=3, help="number of projects (default: 3)")
    p.add_argument("--jobs-per-project", type=int, default=10, help="jobs per project at start")
    p.add_argument("--seed", type=int, default=0, help="seed of the fleet and its walk")
    p.add_argument("--ak", action="append", default=[], help="access key (repeatable)")
    p.add_argument("--sk", action="append", default=[], help="secret key, paired with --ak")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD", help="IAM user")
    p.add_argument("--domain", default="sim-domain", help="IAM account (domain) name")
    rate = _sim_number(0.0, 1.0)
    p.add_argument(
        "--change-rate",
        type=_sim_number(0.0, _SIM_MAX_CHANGE_RATE),
        default=0.0,
        help="random changes per second across the fleet, 0-10000 (default: 0)",
    )
    p.add_argument(
        "--latency-ms",
        type=_sim_number(0.0, _SIM_MAX_LATENCY_MS),
        default=0.0,
        help="added to every DLI call, 0-60000",
    )
    p.add_argument("--error-rate", type=rate, default=0.0, help="fraction of DLI calls -> 5xx")
    p.add_argument(
        "--malformed-rate", type=rate, default=0.0, help="fraction of DLI calls -> broken 200"
    )
    p.add_argument(
        "--throttle-per-s",
        type=_sim_number(0.0, math.inf, low_open=True),
        help="per-project rate limit, > 0 (429 above it; default: no throttling)",
    )
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    asyncio.run(_run_simulator(args))
    return 0


def _user_pairs(specs: Sequence[str]) -> dict[str, str]:
    bad = [spec.split(":", 1)[0] for spec in specs if ":" not in spec]
    if bad:
        raise ConfigError(
            "--user takes NAME:PASSWORD", [f"no password for user {n!r}" for n in bad]
        )
    return dict(spec.split(":", 1) for spec in specs)


async def _run_simulator(args: argparse.Namespace) -> None:
    from bridge.simulator import Simulator, SimulatorConfig

    if len(args.ak) != len(args.sk):
        raise ConfigError(f"--ak and --sk come in pairs (got {len(args.ak)} and {len(args.sk)})")
    config = SimulatorConfig(
        projects=args.projects,
        jobs_per_project=args.jobs_per_project,
        seed=args.seed,
        change_rate=args.change_rate,
        aksk=dict(zip(args.ak, args.sk, strict=True)),
        users=_user_pairs(args.user),
        domain=args.domain,
        throttle_per_s=args.throttle_per_s,
        latency_s=args.latency_ms / 1000.0,
        error_rate=args.error_rate,
        malformed_rate=args.malformed_rate,
    )
    server = Simulator(config).serve(args.host, args.port)
    await serve_until_signalled(server, lambda url: print(f"simulator: {url}", flush=True))


# --- tail and demo (owner: tail/demo) -------------------------------------------------------


def _print_line(line: str) -> bool:
    """Print and flush ``line``; False once the reader has gone (``tail | head``)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # point stdout at /dev/null so the interpreter's final flush does not complain
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tail",
        help="print job events from Kafka, one line each (or JSON)",
        description="Read the events topic as a read_committed consumer (no consumer group) and "
        "print one line per event: time (UTC), project (short id), job name and id, the change "
        "and a warning when a state may have been missed between two polls. Colour on a "
        "terminal unless NO_COLOR is set. Starts at the end of the topic unless "
        "--from-beginning or --since.",
    )
    p.add_argument(
        "--bootstrap-servers",
        help="Kafka to read (default: the --config file's kafka.bootstrap_servers, else "
        "$KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)",
    )
    p.add_argument(
        "--topic", help="events topic (default: the config's kafka.topics.events, dli.jobs.events)"
    )
    p.add_argument("--config", metavar="FILE", help="a dli-bridge TOML config naming both")
    p.add_argument(
        "--project",
        action="append",
        default=[],
        help="only this project id or id prefix (repeatable)",
    )
    p.add_argument(
        "--job", action="append", default=[], help="only this job id or name (repeatable)"
    )
    p.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="KIND",
        help="only this kind: discovered, created, status_changed, updated, deleted (repeatable)",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="read the whole topic first")
    start.add_argument(
        "--since", metavar="DURATION", help="start DURATION ago, e.g. 90s, 10m, 2h, 1d"
    )
    p.add_argument(
        "--json", action="store_true", help="one structured CloudEvent per line (for jq)"
    )
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="auto: on a terminal unless NO_COLOR is set",
    )
    p.set_defaults(func=_cmd_tail)


def _tail_target(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """Bootstrap servers, topic and client options (security) from flags, config, env."""
    from bridge.tail import DEFAULT_BOOTSTRAP_SERVERS, DEFAULT_TOPIC

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP_SERVERS
    topic, options = DEFAULT_TOPIC, {}
    if args.config:
        from bridge.settings import Settings
        from bridge.sink import client_options

        kafka = Settings.from_env(toml_path=args.config).kafka
        bootstrap, topic = kafka.bootstrap_servers, kafka.topics.events
        options = client_options(kafka, client_id="dli-bridge-tail", request_timeout_s=30.0)
        del options["bootstrap_servers"]
    return args.bootstrap_servers or bootstrap, args.topic or topic, options


def _cmd_tail(args: argparse.Namespace) -> int:
    import time

    from bridge import tail

    bootstrap, topic, options = _tail_target(args)
    start: tail.Position = "beginning" if args.from_beginning else "latest"
    if args.since:
        start = int((time.time() - tail.parse_duration(args.since)) * 1000)
    color = tail.use_color(args.color, is_tty=sys.stdout.isatty(), environ=os.environ)
    reader = tail.EventReader(
        bootstrap,
        topic,
        filters=tail.Filters(tuple(args.project), tuple(args.job), tuple(args.type)),
        start=start,
        client_options=options,
    )

    async def follow() -> None:
        async with reader:
            async for event in reader:
                out = tail.json_line(event) if args.json else tail.format_event(event, color=color)
                if not _print_line(out):
                    return

    asyncio.run(run_until_signalled(follow(), quiet=True))
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="start here: local Kafka, simulated fleet, bridge, live",
        description="Start a local Kafka broker (resolved from Maven Central on the first run, "
        "then cached), a simulated DLI fleet whose jobs start, fail, restart and are "
        "reconfigured, and the bridge polling it; print where each listens, then every event "
        "as it arrives until Ctrl-C, which stops everything. $KAFKA_BOOTSTRAP_SERVERS or "
        "--bootstrap-servers uses an existing cluster (default topic names) instead.",
    )
    p.add_argument(
        "--mode",
        choices=["detail", "list", "sweep"],
        default="list",
        help="how the bridge polls (default: list)",
    )
    p.add_argument("--projects", type=int, default=3, help="simulated projects (default: 3)")
    p.add_argument(
        "--jobs-per-project", type=int, default=12, help="jobs per project (default: 12)"
    )
    p.add_argument(
        "--change-rate", type=float, default=2.0, help="job changes per second (default: 2)"
    )
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="poll interval (default: 2)"
    )
    p.add_argument(
        "--events-mode",
        choices=["structured", "binary"],
        default="structured",
        help="CloudEvents Kafka binding mode (default: structured)",
    )
    p.add_argument(
        "--bootstrap-servers",
        help="an existing Kafka (default: $KAFKA_BOOTSTRAP_SERVERS, else local)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated fleet (default: 0)")
    p.add_argument(
        "--verbose", action="store_true", help="also show the bridge's INFO logs (on stderr)"
    )
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="auto: on a terminal unless NO_COLOR is set",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from bridge import demo, tail

    config = demo.DemoConfig(
        mode=args.mode,
        projects=args.projects,
        jobs_per_project=args.jobs_per_project,
        change_rate=args.change_rate,
        interval_s=args.interval,
        events_mode=args.events_mode,
        bootstrap_servers=args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        seed=args.seed,
    )
    color = tail.use_color(args.color, is_tty=sys.stdout.isatty(), environ=os.environ)
    root = logging.getLogger()
    if not args.verbose and root.level == logging.INFO:
        # the demo's screen is the event stream: INFO lines would bury it
        root.setLevel(logging.WARNING)
    asyncio.run(run_until_signalled(demo.run(config, _print_line, color=color), quiet=True))
    return 0


# --- bench (owner: bench) -------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """argparse type for a number above zero."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number above zero")
        return value

    return parse


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give job counts like 1000,10000")
    return sizes


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="compare the bridge with a bare HTTP loop and the SDK",
        description="Start the simulator (own process) and Kafka (local, or "
        "$KAFKA_BOOTSTRAP_SERVERS), then measure on the same fleet: the bare aiohttp loop, "
        "the official SDK loop, and `dli-bridge run` in each mode (each its own process). "
        "Prints one table and the verdict on each target; --sweep adds the scaling sweep.",
    )
    whole, number = _positive(int), _positive(float)
    p.add_argument("--projects", type=whole, default=10, help="projects (default: 10)")
    p.add_argument("--jobs-per-project", type=whole, default=100, help="default: 100")
    p.add_argument(
        "--change-rate",
        type=_sim_number(0.0, _SIM_MAX_CHANGE_RATE),
        help="background changes/s across the fleet (default: 1 %% of the jobs a minute)",
    )
    p.add_argument(
        "--mode", choices=["detail", "list", "sweep", "all"], default="all", help="default: all"
    )
    p.add_argument("--interval-s", type=number, default=5.0, help="poll interval (default: 5)")
    p.add_argument("--jitter-s", type=_sim_number(0.0, math.inf), help="default: interval/10")
    p.add_argument(
        "--duration", type=number, default=30.0, help="steady window of each row, s (default: 30)"
    )
    p.add_argument("--instances", type=whole, default=1, help="bridge processes sharing the work")
    p.add_argument("--concurrency", type=whole, default=32, help="requests in flight (default: 32)")
    p.add_argument("--burst", type=whole, default=1000, help="burst changes/s (default: 1000)")
    p.add_argument("--burst-s", type=number, default=3.0, help="burst length, s (default: 3)")
    p.add_argument("--no-baselines", action="store_true", help="skip the bare and SDK loops")
    p.add_argument("--sweep", action="store_true", help="add the list-mode scaling sweep")
    p.add_argument(
        "--sweep-sizes", type=_sizes, default=None, help="default: 1000,10000,50000,100000"
    )
    p.add_argument("--sweep-interval-s", type=number, default=30.0, help="default: 30")
    p.add_argument("--sweep-duration", type=number, default=60.0, help="per size, s (default: 60)")
    p.add_argument("--partitions", type=whole, default=12, help="state partitions (default: 12)")
    p.add_argument(
        "--transitional-interval-s",
        type=number,
        default=5.0,
        help="the bridge's fast lane for jobs in transitional states (default: 5)",
    )
    p.add_argument("--bootstrap-servers", help="an existing Kafka (default: local broker)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bridge import bench

    config = bench.BenchConfig(
        projects=args.projects,
        jobs_per_project=args.jobs_per_project,
        change_rate=args.change_rate,
        modes=bench.MODES if args.mode == "all" else (args.mode,),
        interval_s=args.interval_s,
        jitter_s=args.jitter_s,
        duration_s=args.duration,
        instances=args.instances,
        concurrency=args.concurrency,
        burst=args.burst,
        burst_s=args.burst_s,
        baselines=not args.no_baselines,
        sweep_sizes=(args.sweep_sizes or bench.DEFAULT_SWEEP_SIZES) if args.sweep else (),
        sweep_interval_s=args.sweep_interval_s,
        sweep_duration_s=args.sweep_duration,
        partitions=args.partitions,
        bootstrap_servers=args.bootstrap_servers,
        json_path=args.json,
        transitional_interval_s=args.transitional_interval_s,
    )
    report = asyncio.run(bench.run(config, lambda line: print(line, file=sys.stderr, flush=True)))
    print(bench.render(report))
    report.save()
    return 0


# --- wiring ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dli-bridge",
        description="Turns the Huawei Cloud DLI Flink job API into typed change events in "
        "Kafka: every job that starts, fails, restarts or is reconfigured becomes a CloudEvent, "
        "once and in order per job. New here? `dli-bridge demo` shows it on this machine.",
        epilog="`dli-bridge COMMAND --help` describes each command and its options.",
    )
    parser.add_argument("--version", action="version", version=f"dli-bridge {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=logs.LEVELS,
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "plain"],
        default="auto",
        help="auto: plain on a terminal, JSON lines otherwise",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # the order a newcomer needs them in
    _add_run(sub)
    _add_demo(sub)
    _add_tail(sub)
    _add_simulate(sub)
    _add_resnapshot(sub)
    _add_schemas(sub)
    _add_check_config(sub)
    _add_local_kafka(sub)
    _add_bench(sub)  # for developers: last
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format, is_tty=sys.stderr.isatty())
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BridgeError as exc:
        print(f"dli-bridge {args.command}: {exc}", file=sys.stderr)
        return exit_code(exc)


def exit_code(exc: BridgeError) -> int:
    """2: fix the configuration or the set-up first; 1: something needed is unavailable or
    failed (Kafka, DLI, the consumer group), starting again later may work."""
    return EXIT_CONFIG if isinstance(exc, ConfigError | LocalKafkaError) else EXIT_UNAVAILABLE
