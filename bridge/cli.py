"""The `dli-bridge` command line: one subcommand per thing a user runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bridge import __version__
from bridge.errors import BridgeError

Command = Callable[[argparse.Namespace], int]


# --- local-kafka (owner: localkafka) -------------------------------------------------------


def _add_local_kafka(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("local-kafka", help="run a local single-node Kafka broker (foreground)")
    p.set_defaults(func=_cmd_local_kafka)


def _cmd_local_kafka(args: argparse.Namespace) -> int:
    raise NotImplementedError


# --- simulate (owner: simulator) -----------------------------------------------------------


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="serve a simulated DLI + IAM API (foreground)")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    raise NotImplementedError


# --- wiring ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dli-bridge",
        description="Huawei Cloud DLI Flink job changes as typed events in Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"dli-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_local_kafka(sub)
    _add_simulate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BridgeError as exc:
        print(f"dli-bridge {args.command}: {exc}", file=sys.stderr)
        return 2
