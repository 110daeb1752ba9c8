"""The running service tree with its HTTP port on 127.0.0.1 (port 0), and a
small treq client, for the /api and /ami/v1 tests.

The config is written to a file first (PUT /api/config and the reloads need
one): SIP and HTTP on loopback ports the OS picks, three tokens (read,
write, admin) and extensions 1001 and 1002.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import attrs
import treq
import yaml
from twisted.internet import defer, reactor
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from pbxd.config import load_config
from pbxd.service import PbxService

READ_TOKEN = "read-token-0123456789abcdef"
WRITE_TOKEN = "write-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
TOKENS = {"read": READ_TOKEN, "write": WRITE_TOKEN, "admin": ADMIN_TOKEN}


def web_config_data(data_dir: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "data_dir": str(data_dir),
        "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0}],
                "domains": ["pbx.test"]},
        "http": {
            "host": "127.0.0.1",
            "port": 0,
            "tokens": [{"name": scope, "token": token, "scopes": [scope]} for scope, token in TOKENS.items()],
        },
        "extensions": [
            {"number": "1001", "password": "secret-1001", "name": "Alice", "email": "alice@pbx.test"},
            {"number": "1002", "password": "secret-1002", "name": "Bob"},
        ],
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return data


@attrs.define
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0]


@attrs.define
class WebPbx:
    service: PbxService
    config_path: Path | None
    host: str
    port: int
    stops: list[str] = attrs.Factory(list)  # what Operations.stop was asked for

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def call(self, method: str, path: str, *, token: str | None = "admin", json_body: Any = None,
                   body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        """One request; ``token`` is a scope name (its token is sent), a raw
        token string, or None for no Authorization header."""
        sent: dict[str, list[str]] = {name: [value] for name, value in (headers or {}).items()}
        if token is not None:
            sent.setdefault("Authorization", [f"Bearer {TOKENS.get(token, token)}"])
        data = body
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", ["application/json"])
        # twisted's Agent rather than treq.request: hyperlink, under treq, cannot
        # encode a URL whose host is an IPv6 literal.
        producer = None if data is None else FileBodyProducer(io.BytesIO(data))
        response = await Agent(reactor).request(method.encode(), (self.base + path).encode(),
                                                Headers(sent), producer)
        return Reply(response.code, response.headers, await treq.content(response))

    @classmethod
    def of(cls, service: PbxService) -> WebPbx:
        """The HTTP side of a service started elsewhere (its stop is Operations' own)."""
        host, port = service.http.address
        return cls(service, service.http.web.config_path, host, port)

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


async def start_web_pbx(tmp_path: Path, **sections: Any) -> WebPbx:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "pbxd.yml"
    config_path.write_text("# pbxd test config\n" + yaml.safe_dump(web_config_data(tmp_path / "data", **sections),
                                                                     sort_keys=False))
    service = PbxService(load_config(config_path), reactor, config_path=config_path)
    service.privilegedStartService()
    service.startService()
    await service.registrar.when_ready()
    await service.store.when_open()
    host, port = service.http.address
    pbx = WebPbx(service, config_path, host, port)

    def stop() -> None:
        pbx.stops.append("stop")

    service.http.operations.stop = stop
    return pbx


async def wait_until(predicate: Any, timeout: float = 10.0, step: float = 0.05) -> None:
    """Poll ``predicate`` on the reactor until it holds (for state changed by other peers)."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"not true within {timeout}s")
        await deferLater(step)
        waited += step


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
