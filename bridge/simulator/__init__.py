"""The stand-in DLI + IAM API: a seeded fleet behind the documented HTTP surface.

Not product code: tests, ``dli-bridge simulate``, the demo and the benchmark use it in place of
Huawei Cloud. ``server`` serves it, ``gateway`` and ``iam`` answer in front of the ``fleet``,
``records`` holds its values and ``render`` shapes jobs as DLI's JSON.
"""

from bridge.simulator.records import SimRejected, SimulatorConfig, TruthEntry
from bridge.simulator.render import SECRETS, jdbc_password
from bridge.simulator.server import DEFAULT_PORT, Simulator

__all__ = [
    "DEFAULT_PORT",
    "SECRETS",
    "SimRejected",
    "Simulator",
    "SimulatorConfig",
    "TruthEntry",
    "jdbc_password",
]
