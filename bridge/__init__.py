"""dli-bridge: Huawei Cloud DLI Flink job changes as typed events in Kafka."""

from bridge.errors import BridgeError

__all__ = ["BridgeError", "__version__"]

__version__ = "0.1.0"
