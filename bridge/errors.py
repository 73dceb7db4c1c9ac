"""Every exception dli-bridge raises, grouped by what the caller can do about it.

```
BridgeError                      root: catch this to catch anything of ours
├── ConfigError                  fatal: fix the configuration and start again
├── LocalKafkaError              fatal: the local broker could not be provided (java/mvn
│                                missing, Maven resolution failed, port taken, not ready)
├── MembershipError              fatal: the consumer group refused this member for good
│                                (authorization, invalid session timeout, coordination died)
├── BenchError                   fatal: `dli-bridge bench` could not run a part (a child
│                                process died or never became ready)
├── SinkError                    retryable: a Kafka write, restore or admin call failed; the
│   │                            shard's writer is broken: close_shard, then open_shard again
│   ├── SinkUnavailable          the broker cannot be reached or did not answer in time
│   └── ProducerFencedError      fatal for that shard's producer: a newer owner (or the broker,
│                                after a transaction timeout) fenced it; stop the shard
└── ApiError                     a DLI / IAM call failed (status, code, request_id, project_id)
    ├── RetryableApiError        retry later; the client already retried with backoff
    │   ├── ApiUnavailable       5xx, timeout, connection refused or reset
    │   ├── RateLimited          429 / APIG.0308; retry_after_s when the server said
    │   └── CircuitOpen          the project's breaker is open; retry_after_s until half-open
    ├── AuthError                401/403 or IAM refused the credential: fix the credential
    ├── JobNotFound              the job does not exist (DLI answers 400 DLI.16001; 404 too)
    ├── ApiRejected              any other 4xx: the request itself is wrong
    └── MalformedResponse        2xx body that is not JSON or fails validation; carries the
                                 raw body for the dead-letter topic
```

Third-party exceptions (aiohttp, aiokafka, pydantic) never leave the edge modules: they are
mapped to the most specific class here and chained with ``raise ... from exc``. No message,
attribute or repr here ever contains a secret.
"""

from __future__ import annotations

from typing import ClassVar, TypedDict, Unpack

__all__ = [
    "ApiError",
    "ApiErrorContext",
    "ApiRejected",
    "ApiUnavailable",
    "AuthError",
    "BenchError",
    "BridgeError",
    "CircuitOpen",
    "ConfigError",
    "JobNotFound",
    "LocalKafkaError",
    "MalformedResponse",
    "MembershipError",
    "ProducerFencedError",
    "RateLimited",
    "RetryableApiError",
    "SinkError",
    "SinkUnavailable",
]


class BridgeError(Exception):
    """Root of every dli-bridge error. ``retryable`` says whether trying again may help."""

    retryable: ClassVar[bool] = False


class ConfigError(BridgeError):
    """The configuration is invalid; ``problems`` lists every problem found, secrets masked."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        detail = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"{message}{detail}")


class LocalKafkaError(BridgeError):
    """The local Kafka broker could not be resolved, started or reached.

    ``log_tail`` holds the last lines of the broker (or Maven) output when there are any.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        text = message if not log_tail else f"{message}\n--- last output ---\n{log_tail}"
        super().__init__(text)


class SinkError(BridgeError):
    """A Kafka call at the sink failed; ``shard`` and ``topic`` say where, when known.

    Exactly-once: nothing of the failed write is visible (its transaction is aborted, or left
    for the next owner to abort). At-least-once: part of it may have landed. Either way,
    reopen the shard and republish the same records (same ids and sequences).
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, shard: int | None = None, topic: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.shard = shard
        self.topic = topic

    def __repr__(self) -> str:
        where = " ".join(
            f"{k}={v!r}" for k, v in (("shard", self.shard), ("topic", self.topic)) if v is not None
        )
        return f"<{type(self).__name__} {where + ' ' if where else ''}{self.message!r}>"


class SinkUnavailable(SinkError):
    """The broker could not be reached, or did not answer within the deadline."""


class ProducerFencedError(SinkError):
    """The shard's producer was fenced: another owner started with the same transactional id,
    or the broker aborted a transaction that outlived its timeout. Fatal for that producer."""

    retryable: ClassVar[bool] = False


class MembershipError(BridgeError):
    """This instance cannot stay in the consumer group that assigns shards; restart it."""


class BenchError(BridgeError):
    """The benchmark could not run: a child process (simulator, bridge, loop) failed or hung."""


class ApiErrorContext(TypedDict, total=False):
    """Where a failed call went; every ApiError subclass accepts these keywords."""

    status: int | None
    code: str | None
    request_id: str | None
    project_id: str | None
    method: str | None
    url: str | None


class ApiError(BridgeError):
    """A call to DLI or IAM failed.

    ``status`` is the HTTP status (None when no response arrived), ``code`` the DLI/APIG
    error code (``DLI.16001``, ``APIG.0308``...), ``request_id`` the gateway's request id.
    """

    def __init__(self, message: str, **context: Unpack[ApiErrorContext]) -> None:
        super().__init__(message)
        self.message = message
        self.status = context.get("status")
        self.code = context.get("code")
        self.request_id = context.get("request_id")
        self.project_id = context.get("project_id")
        self.method = context.get("method")
        self.url = context.get("url")

    def __repr__(self) -> str:
        fields = {
            "status": self.status,
            "code": self.code,
            "project_id": self.project_id,
            "request_id": self.request_id,
        }
        shown = " ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
        return f"<{type(self).__name__} {shown + ' ' if shown else ''}{self.message!r}>"


class RetryableApiError(ApiError):
    """Trying again later may succeed; ``retry_after_s`` is a hint when known."""

    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        **context: Unpack[ApiErrorContext],
    ) -> None:
        super().__init__(message, **context)
        self.retry_after_s = retry_after_s


class ApiUnavailable(RetryableApiError):
    """5xx, timeout or connection failure."""


class RateLimited(RetryableApiError):
    """The gateway throttled us (429 / APIG.0308)."""


class CircuitOpen(RetryableApiError):
    """The project's circuit breaker is open; no request was sent."""


class AuthError(ApiError):
    """The credential was refused (401/403, IAM rejected the password, bad AK/SK signature)."""


class JobNotFound(ApiError):
    """The job does not exist. DLI answers 400 ``DLI.16001``; a 404 is treated the same."""

    def __init__(
        self, message: str, *, job_id: int | str | None = None, **context: Unpack[ApiErrorContext]
    ) -> None:
        super().__init__(message, **context)
        self.job_id = job_id


class ApiRejected(ApiError):
    """Any other 4xx: the request is wrong and retrying will not help."""


class MalformedResponse(ApiError):
    """A 2xx answer whose body is not JSON or does not validate.

    ``body`` is the raw response body (bytes, untouched) for the dead-letter path;
    ``detail`` says what was wrong with it; ``reason`` names that for the dead-letter metric:
    ``not_json`` (not JSON, or not an object) or ``invalid`` (JSON of the wrong shape).
    """

    def __init__(
        self,
        message: str,
        *,
        body: bytes,
        detail: str = "",
        reason: str = "invalid",
        **context: Unpack[ApiErrorContext],
    ) -> None:
        super().__init__(message, **context)
        self.body = body
        self.detail = detail
        self.reason = reason
