"""The simulated IAM: password tokens for a project or the domain, and the project lists."""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from bridge.models import JsonDict
from bridge.simulator.fleet import Fleet
from bridge.simulator.gateway import Gateway, Token, json_response
from bridge.simulator.records import SimulatorConfig

__all__ = ["Iam"]


def _iam_error(status: int, title: str, message: str) -> web.Response:
    # IAM answers in Keystone's error shape, not the gateway's error_code/error_msg.
    return json_response({"error": {"code": status, "title": title, "message": message}}, status)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


class Iam:
    """IAM's token and project calls over the simulated fleet, served behind the gateway.

    Issued tokens go to the gateway (``Gateway.issue_token``), which checks them on every
    later call.
    """

    def __init__(
        self,
        fleet: Fleet,
        gateway: Gateway,
        requests: Counter[tuple[str, str]],
        config: SimulatorConfig,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._fleet = fleet
        self._gateway = gateway
        self._requests = requests
        self._users = config.users
        self._domain_name = config.domain
        self._token_ttl_s = config.token_ttl_s
        self._seed = config.seed
        self._region = config.region
        self._clock = clock

    def _user_id(self, name: str) -> str:
        return hashlib.sha256(f"{self._seed}/user/{name}".encode()).hexdigest()[:32]

    def _domain(self) -> JsonDict:
        return {"id": self._fleet.domain_id, "name": self._domain_name}

    def _scope(self, scope: Any) -> tuple[str, JsonDict] | None:
        """("project", {...}) or ("domain", {...}) for a valid scope, else None."""
        project = _dig(scope, "project")
        if isinstance(project, dict):
            for p in self._fleet.projects.values():
                if project.get("id") == p.id or project.get("name") == p.name:
                    return "project", {"id": p.id, "name": p.name, "domain": self._domain()}
            return None
        domain = _dig(scope, "domain")
        wanted = self._domain()
        if (
            isinstance(domain, dict)
            and domain
            and all(domain.get(k, v) == v for k, v in wanted.items())
        ):
            return "domain", wanted
        return None

    async def issue_token(self, request: web.Request) -> web.Response:
        self._requests[("token", "")] += 1
        try:
            auth = orjson.loads(await request.read())["auth"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _iam_error(400, "Bad Request", "The request body has no 'auth' object.")
        if "password" not in (_dig(auth, "identity", "methods") or []):
            return _iam_error(400, "Bad Request", "Only the password method is supported here.")
        name = self._password_user(_dig(auth, "identity", "password", "user"))
        if name is None:
            return _iam_error(401, "Unauthorized", "The username or password is wrong.")
        scope = self._scope(_dig(auth, "scope"))
        if scope is None:
            message = "The request you have made requires authentication."
            return _iam_error(401, "Unauthorized", message)
        return self._token_response(request, name, scope)

    def _password_user(self, user: Any) -> str | None:
        """The IAM user name when name, password and account (domain) all match."""
        name, password, domain = (_dig(user, k) for k in ("name", "password", "domain"))
        if not isinstance(name, str) or self._users.get(name) != password:
            return None
        wanted = self._domain()
        if not isinstance(domain, dict) or any(domain.get(k, v) != v for k, v in wanted.items()):
            return None
        return name

    def _token_response(
        self, request: web.Request, user: str, scope: tuple[str, JsonDict]
    ) -> web.Response:
        now = self._clock()
        token_id = "MIIT" + secrets.token_urlsafe(192)
        kind, target = scope
        scoped_to = target["id"] if kind == "project" else None
        self._gateway.issue_token(token_id, Token(user, scoped_to, now + self._token_ttl_s))
        base = str(request.url.origin())
        body: JsonDict = {
            "expires_at": _iso(now + self._token_ttl_s),
            "issued_at": _iso(now),
            "methods": ["password"],
            kind: target,
            "roles": [{"id": "0", "name": "te_admin"}, {"id": "0", "name": "dli_adm"}],
            "user": {
                "domain": self._domain(),
                "id": self._user_id(user),
                "name": user,
                "password_expires_at": "",
            },
        }
        if not request.query.get("nocatalog"):
            body["catalog"] = self._catalog(base)
        return json_response({"token": body}, 201, {"X-Subject-Token": token_id})

    def _catalog(self, base: str) -> list[JsonDict]:
        services = {"dli": f"{base}/v1.0/$(tenant_id)s", "iam": f"{base}/v3"}
        return [
            {
                "endpoints": [
                    {
                        "id": self._user_id(f"endpoint/{name}"),
                        "interface": "public",
                        "region": self._region,
                        "region_id": self._region,
                        "url": url,
                    }
                ],
                "id": self._user_id(f"service/{name}"),
                "name": name,
                "type": name,
            }
            for name, url in services.items()
        ]

    def _project_entries(self, base: str, name: str | None = None) -> list[JsonDict]:
        domain_id = self._fleet.domain_id
        return [
            {
                "id": p.id,
                "name": p.name,
                "domain_id": domain_id,
                "parent_id": domain_id,
                "is_domain": False,
                "enabled": True,
                "description": "",
                "links": {"self": f"{base}/v3/projects/{p.id}"},
            }
            for p in self._fleet.projects.values()
            if name is None or p.name == name
        ]

    async def auth_projects(self, request: web.Request) -> web.Response:
        return await self._iam_list(request, "auth_projects", None)

    async def projects(self, request: web.Request) -> web.Response:
        return await self._iam_list(request, "projects", request.query.get("name"))

    async def _iam_list(self, request: web.Request, route: str, name: str | None) -> web.Response:
        self._requests[(route, "")] += 1
        denied = await self._gateway.authenticate(request, None)
        if denied is not None:
            return denied
        base = str(request.url.origin())
        links = {"self": str(request.url), "previous": None, "next": None}
        return json_response({"links": links, "projects": self._project_entries(base, name)})
