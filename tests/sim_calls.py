"""Calling the simulator over HTTP in tests: one-shot requests, job URLs, IAM tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy


class Reply:
    def __init__(self, status: int, raw: bytes, headers: CIMultiDictProxy[str]) -> None:
        self.status, self.raw, self.headers = status, raw, headers

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)


async def call(
    method: str,
    url: str,
    *,
    params: Mapping[str, str | int] | None = None,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    timeout_s: float = 10.0,
) -> Reply:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, params=params, headers=headers, json=json) as resp,
    ):
        return Reply(resp.status, await resp.read(), resp.headers)


def jobs_url(base: str, project_id: str, job_id: int | str | None = None) -> str:
    url = f"{base}/v1.0/{project_id}/streaming/jobs"
    return url if job_id is None else f"{url}/{job_id}"


async def list_all(base: str, project_id: str, **params: str | int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        query = {"offset": len(rows), "limit": 100, "order": "asc", **params}
        page = await call("GET", jobs_url(base, project_id), params=query)
        jobs = page.json["job_list"]["jobs"]
        if not jobs:
            return rows
        rows += jobs


def password_body(scope: Any, user: str = "ops", password: str = "pw") -> Any:
    user_doc = {"name": user, "password": password, "domain": {"name": "sim-domain"}}
    identity = {"methods": ["password"], "password": {"user": user_doc}}
    return {"auth": {"identity": identity, "scope": scope}}


async def token_for(base: str, project_id: str) -> str:
    reply = await call(
        "POST", f"{base}/v3/auth/tokens", json=password_body({"project": {"id": project_id}})
    )
    assert reply.status == 201
    return reply.headers["X-Subject-Token"]


def is_gateway_error(reply: Reply, status: int, code: str) -> bool:
    body = reply.json
    return (
        reply.status == status
        and body["error_code"] == code
        and body["request_id"] == reply.headers["X-Request-Id"]
    )
