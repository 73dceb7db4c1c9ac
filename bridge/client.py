"""The async DLI and IAM client: paging, retries, rate limits, breakers and error mapping."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
import orjson
import yarl

from bridge.answers import (
    REQUEST_ID_HEADER,
    Answer,
    Call,
    check_success,
    error_for,
    exchange,
    malformed,
    validate,
)
from bridge.auth import Auth, OutgoingRequest
from bridge.breaker import BreakerState, CircuitBreaker
from bridge.deadlines import Deadlines
from bridge.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    RateLimited,
)
from bridge.models import (
    Fetched,
    JobDetail,
    JobDetailResponse,
    JobListItem,
    JobListResponse,
    JobRowsResponse,
    Project,
    ProjectListResponse,
)
from bridge.paging import PageScan, model_id
from bridge.ratelimit import BucketGroup
from bridge.retry import Backoff, Clock, Sleep, parse_retry_after
from bridge.settings import ApiSettings

__all__ = ["DliClient", "EngineRow", "check_row", "new_session", "parse_job_body"]

R = TypeVar("R")
EngineRow = tuple[int, dict[str, Any]]  # a list row as the engine reads it: (job_id, raw row)
# The fields of a row the engine decides on before it validates the row whole (see JobRow).
_LEAN_TEXT = ("name", "status", "job_type", "queue_name")

log = logging.getLogger(__name__)


def new_session() -> aiohttp.ClientSession:
    """The process's one HTTP session, for the composer to own and hand to client and auth.

    The client's in-flight semaphore is the connection cap, so the pool itself is unbounded;
    every request carries its own timeout (``Deadlines``), so the session has none. It asks
    for JSON by default (a header per request would be merged into the defaults every time).
    Call it from inside the event loop, and close it (``async with``) after everything that
    borrowed it.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"Accept": "application/json"},
    )


def parse_job_body(
    body: bytes, *, project_id: str, job_id: int | str, url: yarl.URL | str | None = None
) -> Fetched[JobDetail]:
    """A Job Details 2xx body as ``Fetched[JobDetail]``; pure (no I/O).

    Raises ``MalformedResponse`` (carrying ``body``) when it is not JSON, does not validate or
    has no ``job_detail``, and ``ApiRejected`` when DLI says ``is_success`` false, exactly
    as ``DliClient.get_job`` does. ``url`` only labels the errors (default: the job's path).
    """
    where = yarl.URL(url) if url is not None else _job_path(project_id, job_id)
    call = Call("GET", where, project_id, job_id)
    return _parse_detail(Answer(200, body, None, None), call)


def check_row(raw: dict[str, Any], *, project_id: str, job_id: int) -> None:
    """Validate a (lean-read) list row as a whole ``JobListItem`` before it becomes a snapshot;
    raises ``MalformedResponse`` carrying the row as its body. Pure."""
    call = Call("GET", _jobs_path(project_id), project_id, job_id)
    validate(JobListItem, raw, Answer(200, orjson.dumps(raw), None, None), call)


def _jobs_path(project_id: str) -> yarl.URL:
    return yarl.URL.build(path=f"/v1.0/{project_id}/streaming/jobs")


def _job_path(project_id: str, job_id: int | str) -> yarl.URL:
    return yarl.URL.build(path=f"/v1.0/{project_id}/streaming/jobs/{job_id}")


def _parse_detail(answer: Answer, call: Call) -> Fetched[JobDetail]:
    doc = _json_object(answer, call)
    body = validate(JobDetailResponse, doc, answer, call)
    check_success(body.is_success, body.message, answer, call)
    if body.job_detail is None:
        raise malformed("no job_detail in the answer", answer, call)
    return Fetched(raw=doc["job_detail"], model=body.job_detail)


def _json_object(answer: Answer, call: Call) -> dict[str, Any]:
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        what = "the answer is not JSON"
        raise malformed(what, answer, call, detail=str(exc), reason="not_json") from exc
    if not isinstance(doc, dict):
        raise malformed("the answer is not a JSON object", answer, call, reason="not_json")
    return doc


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class DliClient:
    """DLI and IAM calls over a borrowed aiohttp session, as an async context manager.

    The session belongs to whoever composes the app (see ``new_session``) and outlives the
    client; the IAM token auth borrows the same one. Every call goes through, in order: the
    project's circuit breaker, the project's and the credential's token buckets, the
    credential, the global in-flight cap (held only while the request is on the wire), and
    a timeout (``Deadlines``). Failures are mapped to ``bridge.errors``; retryable ones are retried
    with full-jitter backoff, or after ``Retry-After`` when the gateway throttles us.
    ``clock``, ``sleep``, ``rng`` and ``wall_clock`` are injectable for tests.
    """

    def __init__(
        self,
        settings: ApiSettings,
        auth: Auth,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self._dli_base = settings.dli_url
        self._iam_base = settings.iam_url
        self._session = session
        self._state = _State.UNOPENED
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._backoff = Backoff(settings.retry_base_s, settings.retry_cap_s)
        self._project_buckets = BucketGroup(
            settings.project_rate_per_s, settings.project_burst, clock=clock, sleep=sleep
        )
        self._credential_buckets = BucketGroup(
            settings.credential_rate_per_s, settings.credential_burst, clock=clock, sleep=sleep
        )
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._deadlines = Deadlines(settings.request_timeout_s)
        self._busy = 0
        self._breakers: dict[str, CircuitBreaker] = {}
        self._jobs_urls: dict[str, yarl.URL] = {}
        # Whether this API's total_count counts every match, not the page: proven by one
        # answer counting more than its rows (DLI's doc implies it but does not say it).
        self._counts_all = False

    def __repr__(self) -> str:
        opened = sum(b.state is not BreakerState.CLOSED for b in self._breakers.values())
        return (
            f"<DliClient {self._dli_base} {self._state.value} auth={self.auth!r} "
            f"in_flight={self._busy}/{self.settings.max_in_flight} breakers_not_closed={opened}>"
        )

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"DliClient cannot be opened when {self._state.value}")
        if self._session.closed:
            raise RuntimeError("DliClient needs an open aiohttp session")
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The session is borrowed: its owner closes it after everything that uses it.
        self._state = _State.CLOSED

    @property
    def session(self) -> aiohttp.ClientSession:
        """The borrowed session requests go through, while the client is open."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"DliClient is {self._state.value}, not open")
        return self._session

    def breaker_states(self) -> dict[str, BreakerState]:
        """Each project's breaker state, for health and metrics."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def breaker_state(self, project_id: str) -> BreakerState:
        """One project's breaker state (closed for a project never called)."""
        breaker = self._breakers.get(project_id)
        return BreakerState.CLOSED if breaker is None else breaker.state

    # --- public calls -----------------------------------------------------------------------

    async def get_job(self, project_id: str, job_id: int | str) -> Fetched[JobDetail]:
        """One job's detail; raises JobNotFound when DLI says it does not exist."""
        call = self._job_call(project_id, job_id)
        return _parse_detail(await self._send(call), call)

    async def get_job_body(self, project_id: str, job_id: int | str) -> bytes:
        """The raw 2xx body of one job's detail call, not parsed (see ``parse_job_body``).

        Statuses and failures are mapped exactly as in ``get_job`` (JobNotFound on
        ``DLI.16001``), so the engine can fingerprint the bytes before parsing them.
        """
        return (await self._send(self._job_call(project_id, job_id))).body

    def _job_call(self, project_id: str, job_id: int | str) -> Call:
        jobs = self._jobs_url(project_id)
        if type(job_id) is int:  # digits need no quoting: half the cost of yarl's "/"
            url = jobs.with_path(f"{jobs.raw_path}/{job_id}", encoded=True)
        else:
            url = jobs / str(job_id)
        return Call("GET", url, project_id, job_id)

    async def list_jobs(
        self,
        project_id: str,
        *,
        show_detail: bool = False,
        page_size: int | None = None,
        **filters: str | int | bool,
    ) -> list[Fetched[JobListItem]]:
        """Every job row of a project, each job once, paging through the whole list."""
        rows: list[Fetched[JobListItem]] = []
        pages = self.iter_pages(project_id, show_detail=show_detail, page_size=page_size, **filters)
        async for page in pages:
            rows.extend(page)
        return rows

    def iter_pages(
        self,
        project_id: str,
        *,
        show_detail: bool = False,
        page_size: int | None = None,
        **filters: str | int | bool,
    ) -> AsyncIterator[list[Fetched[JobListItem]]]:
        """The job rows of a project, page by page, each job once (see PageScan)."""
        query = _list_query(show_detail, filters)
        return self._pages(project_id, query, page_size, self._list_page, model_id)

    def iter_rows(
        self, project_id: str, *, show_detail: bool = False
    ) -> AsyncIterator[list[EngineRow]]:
        """``iter_pages`` for the engine: each row as ``(job_id, raw)``, checked only as far as
        ``JobRow`` (the raw row is whole; validate it as ``JobListItem`` before using it as a
        snapshot). Most rows of most sweeps are unchanged, so they are checked by hand, not
        modelled: pydantic sees a page only when something in it needs coercing or refusing."""
        query = _list_query(show_detail, {})
        return self._pages(project_id, query, None, self._row_doc, _row_id)

    async def count_jobs(self, project_id: str) -> int | None:
        """How many jobs the project's list holds, from one request for one light row.

        None when the answer does not prove it: ``total_count`` absent, or not yet shown to
        count every match (DLI's docs leave open whether it counts the page or every match;
        a count above a page's rows, in this answer or any earlier one, can only be every
        match).
        """
        query = _list_query(False, {}) | {"offset": "0", "limit": "1"}
        _, total = await self._row_doc(project_id, query)
        return total

    async def _pages(
        self,
        project_id: str,
        query: dict[str, str],
        page_size: int | None,
        read: Callable[[str, dict[str, str]], Awaitable[tuple[list[R], int | None]]],
        key: Callable[[R], int],
    ) -> AsyncIterator[list[R]]:
        scan = PageScan(page_size or self.settings.page_size, project_id)
        while scan.offset is not None:
            query |= {"offset": str(scan.offset), "limit": str(scan.limit)}
            rows, total = await read(project_id, query)
            fresh = scan.take_by(rows, key, total)
            if fresh:
                yield fresh
        if scan.step_backs:
            log.info(
                "job list of %s shifted during the sweep: %d re-reads", project_id, scan.step_backs
            )

    async def list_projects(self) -> list[Fetched[Project]]:
        """The IAM projects the credential can see (``GET /v3/auth/projects``)."""
        call = Call("GET", _join(self._iam_base, "v3", "auth", "projects"), None)
        doc, answer = await self._get_json(call)
        body = validate(ProjectListResponse, doc, answer, call)
        return [
            Fetched(raw=r, model=m) for r, m in zip(doc["projects"], body.projects, strict=True)
        ]

    # --- one page, one call -----------------------------------------------------------------

    async def _list_page(
        self, project_id: str, query: dict[str, str]
    ) -> tuple[list[Fetched[JobListItem]], int | None]:
        """A list page's validated rows and its ``total_count`` (see ``_total``)."""
        call = Call("GET", self._jobs_url(project_id).with_query(query), project_id)
        doc, answer = await self._get_json(call)
        body = validate(JobListResponse, doc, answer, call)
        rows = _rows(doc, body, answer, call)
        return rows, self._total(doc, len(rows))

    async def _row_doc(
        self, project_id: str, query: dict[str, str]
    ) -> tuple[list[EngineRow], int | None]:
        """A list page's rows, checked as ``iter_rows`` says, and its ``total_count`` (see
        ``_total``)."""
        call = Call("GET", self._jobs_url(project_id).with_query(query), project_id)
        doc, answer = await self._get_json(call)
        rows = _lean_rows(doc)
        if rows is None:  # something to coerce or to refuse: pydantic decides, with its errors
            body = validate(JobRowsResponse, doc, answer, call)
            rows = [(row.model.job_id, row.raw) for row in _rows(doc, body, answer, call)]
        return rows, self._total(doc, len(rows))

    def _total(self, doc: dict[str, Any], rows: int) -> int | None:
        """A checked page's ``total_count`` as the count of every match, or None: absent, not
        an integer, or not yet proven to count every match. A count above the page's rows
        proves it, here and from now on."""
        total = doc["job_list"].get("total_count")  # a checked page has its job_list object
        if type(total) is not int:
            return None
        if total > rows and not self._counts_all:
            self._counts_all = True
            log.debug("%s: total_count counts every match, not the page", self._dli_base)
        return total if self._counts_all else None

    async def _get_json(self, call: Call) -> tuple[dict[str, Any], Answer]:
        answer = await self._send(call)
        return _json_object(answer, call), answer

    # --- attempts, retries, limits ----------------------------------------------------------

    async def _send(self, call: Call) -> Answer:
        """Attempt ``call`` until it succeeds, fails for good, or runs out of attempts."""
        breaker = self._breaker(call.project_id)
        reauth_left = 1
        attempt = 0
        while True:
            if breaker is not None:
                breaker.before_attempt()
            request = OutgoingRequest(call.method, call.url)
            outcome = await self._attempt(call, request)
            if isinstance(outcome, Answer) and 200 <= outcome.status < 300:
                _settle(breaker, None)
                return outcome
            error = outcome if isinstance(outcome, ApiError) else self._error_for(outcome, call)
            _settle(breaker, error)
            if reauth_left and self._fresh_credential_may_help(outcome, error, request):
                reauth_left -= 1
                continue
            attempt += 1
            if not error.retryable or attempt >= self.settings.retry_attempts:
                raise error
            await self._pause(call, error, attempt - 1)

    def _fresh_credential_may_help(
        self, outcome: Answer | ApiError, error: ApiError, request: OutgoingRequest
    ) -> bool:
        # Only DLI's own 401 may mean a stale token; IAM refusing the password is final.
        answered = outcome is not error
        return answered and _is_unauthorized(error) and self.auth.invalidate(request)

    async def _attempt(self, call: Call, request: OutgoingRequest) -> Answer | ApiError:
        """One try: limits, credential, in-flight slot, the exchange; errors are returned."""
        try:
            if call.project_id is not None:
                await self._project_buckets.acquire(call.project_id)
            await self._credential_buckets.acquire(self.auth.credential_id)
            await self.auth.apply(request, call.project_id)
            async with self._in_flight:
                self._busy += 1
                try:
                    status, headers, body = await exchange(
                        self.session,
                        request.method,
                        request.url,
                        headers=request.headers,
                        body=request.body,
                        deadlines=self._deadlines,
                        context=call.context,
                    )
                finally:
                    self._busy -= 1
        except ApiError as exc:  # no answer, or the credential could not be had
            return exc
        request_id = headers.get(REQUEST_ID_HEADER)
        if log.isEnabledFor(logging.DEBUG):
            extra = {"request_id": request_id}
            log.debug("%s %s -> %d", call.method, call.url.path, status, extra=extra)
        return Answer(status, body, headers.get("Retry-After"), request_id)

    async def _pause(self, call: Call, error: ApiError, attempt: int) -> None:
        hint = error.retry_after_s if isinstance(error, RateLimited) else None
        if hint is not None:
            delay = min(hint, self.settings.retry_after_cap_s)
        else:
            delay = self._backoff.delay_s(attempt, self._rng)
        log.info(
            "%s %s failed (%r); retry %d in %.2f s",
            call.method,
            call.url.path,
            error,
            attempt + 1,
            delay,
            extra={"project_id": call.project_id, "request_id": error.request_id},
        )
        await self._sleep(delay)

    def _breaker(self, project_id: str | None) -> CircuitBreaker | None:
        if project_id is None:
            return None
        breaker = self._breakers.get(project_id)
        if breaker is None:
            breaker = CircuitBreaker(
                project_id,
                self.settings.breaker_threshold,
                self.settings.breaker_cooldown_s,
                clock=self._clock,
            )
            self._breakers[project_id] = breaker
        return breaker

    def _jobs_url(self, project_id: str) -> yarl.URL:
        url = self._jobs_urls.get(project_id)
        if url is None:
            url = _join(self._dli_base, "v1.0", project_id, "streaming", "jobs")
            self._jobs_urls[project_id] = url
        return url

    def _error_for(self, answer: Answer, call: Call) -> ApiError:
        retry_after_s = parse_retry_after(answer.retry_after, self._wall_clock())
        return error_for(answer, call, retry_after_s)


# --- pure helpers ---------------------------------------------------------------------------


def _list_query(show_detail: bool, filters: Mapping[str, str | int | bool]) -> dict[str, str]:
    query = {k: _query_value(v) for k, v in filters.items()}
    return query | {"order": "asc", "show_detail": _query_value(show_detail)}


def _lean_rows(doc: dict[str, Any]) -> list[EngineRow] | None:
    """A successful list body's rows when every row already holds what ``JobRow`` would
    (an int ``job_id``, text or null in its other fields), checked by hand; else None."""
    flag = doc.get("is_success")  # DLI's docs say the string "true"; SDKs decode a bool
    if flag is not None and flag is not True and flag != "true":
        return None
    message, job_list = doc.get("message"), doc.get("job_list")
    if (message is not None and type(message) is not str) or type(job_list) is not dict:
        return None
    jobs = job_list.get("jobs")
    if not jobs:
        return [] if jobs is None or type(jobs) is list else None
    if type(jobs) is not list:
        return None
    rows: list[EngineRow] = []
    for row in jobs:
        if type(row) is not dict:
            return None
        job_id = row.get("job_id")
        if type(job_id) is not int:
            return None
        for name in _LEAN_TEXT:
            value = row.get(name)
            if value is not None and type(value) is not str:
                return None
        rows.append((job_id, row))
    return rows


def _row_id(row: EngineRow) -> int:
    return row[0]


def _rows(
    doc: dict[str, Any], body: JobListResponse | JobRowsResponse, answer: Answer, call: Call
) -> list[Fetched[Any]]:
    """A validated list page's rows, each with its raw dict."""
    check_success(body.is_success, body.message, answer, call)
    if body.job_list is None:
        # An answer without a list must not read as "every job is gone".
        raise malformed("no job_list in the answer", answer, call)
    models = body.job_list.jobs or []
    raws = doc["job_list"].get("jobs") or []
    return [Fetched(raw=r, model=m) for r, m in zip(raws, models, strict=True)]


def _join(base: yarl.URL, *segments: str) -> yarl.URL:
    url = base
    for segment in segments:
        url = url / segment
    return url


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _settle(breaker: CircuitBreaker | None, error: ApiError | None) -> None:
    """Tell the breaker what the attempt says about the project's health."""
    if breaker is None:
        return
    if isinstance(error, ApiUnavailable):
        breaker.record_failure()
    elif isinstance(error, RateLimited):
        # Throttling is the gateway pacing the credential, not the project being sick;
        # Retry-After already slows us down.
        breaker.record_neutral()
    else:
        breaker.record_success()


def _is_unauthorized(error: ApiError) -> bool:
    return isinstance(error, AuthError) and error.status == 401
