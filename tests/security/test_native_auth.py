"""Access through the native HTTP front (``--native-http``): the front serves only callers Python has
admitted, refusals stay Python's, and revocations and access changes hold, against the real API
server (TokenReview, Secrets) and real guests."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tars_agent.agent import Agent
from tars_agent.main import start_http
from tars_agent.native_front import GRANT_TTL_S, NativeHttp
from tests.fixtures import ControlPlane
from tests.security.conftest import Tokens, guard_for, make_agent, tars_model

PRIVATE = "private-echo"
INFER = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
KEY = "tars-key-0123456789abcdef"
OTHER_KEY = "tars-key-fedcba9876543210"
ACCESS = {"serviceAccounts": [{"name": "caller"}], "apiKeySecrets": ["echo-keys"]}


@dataclass
class Front:
    namespace: str
    agent: Agent
    front: NativeHttp
    session: aiohttp.ClientSession
    base: str
    tokens: Tokens

    async def infer(self, **headers: str) -> int:
        async with self.session.post(f"{self.base}/v2/models/{PRIVATE}/infer", json=INFER, headers=headers) as r:
            await r.read()
            return r.status

    seen: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    def served(self) -> dict[int, int]:
        """Answers the front gave itself since the last call, by status."""
        self.front.collect()
        counts: Counter[int] = Counter()
        for (_label, _route, status), count in (self.front.served - self.seen).items():
            counts[status] += count
        self.seen = self.front.served.copy()
        return dict(counts)


@pytest.fixture
async def front(
    control_plane: ControlPlane, namespace: str, kube_api: Any, backend: Any, tokens: Tokens
) -> AsyncIterator[Front]:
    assert backend.path == "native", "tars_native is not installed: run make install (hack/build-native.sh)"
    for sa in ("caller", "bystander"):
        tokens.service_account(namespace, sa)
    tokens.secret(namespace, "echo-keys", {"ci": KEY, "partner": OTHER_KEY})
    agent = make_agent(backend, host="127.0.0.1", port=0)
    assert await agent.ensure_loaded(tars_model(PRIVATE, "builtin://echo", namespace, access=ACCESS))
    guard = guard_for(kube_api, agent.metrics.registry)
    runner, listener, native = await start_http(agent, guard, None, None, False, True)
    session = aiohttp.ClientSession()
    yield Front(namespace, agent, native, session, f"http://127.0.0.1:{agent.config.port}", tokens)
    await session.close()
    native.close()
    listener.close()
    await runner.cleanup()
    agent.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_front_serves_only_callers_python_admitted(front: Front) -> None:
    caller = bearer(front.tokens.token(front.namespace, "caller"))
    assert await front.infer(**caller) == 200  # Python: TokenReview, then teaches the front
    assert front.served() == {}
    assert [await front.infer(**caller) for _ in range(3)] == [200] * 3
    assert front.served() == {200: 3}
    # Anyone else still meets Python's refusals: no credentials, garbage, a ServiceAccount not listed,
    # a wrong key.
    assert await front.infer() == 401
    assert await front.infer(**bearer("not-a-token")) == 401
    assert await front.infer(**bearer(front.tokens.token(front.namespace, "bystander"))) == 403
    assert await front.infer(**{"X-API-Key": KEY[:-1] + "x"}) == 401
    assert front.served() == {}


async def test_a_revoked_api_key_is_refused_within_the_grant_lifetime(front: Front) -> None:
    assert await front.infer(**{"X-API-Key": KEY}) == 200
    assert await front.infer(**{"X-API-Key": KEY}) == 200
    assert front.served() == {200: 1}
    front.tokens.drop_secret_entry(front.namespace, "echo-keys", "ci")
    revoked = time.monotonic()
    # Bounded staleness: Python's Secret cache (0.5 s here) plus the front's grant (GRANT_TTL_S).
    deadline = revoked + 0.5 + GRANT_TTL_S + 15
    while await front.infer(**{"X-API-Key": KEY}) == 200:
        assert time.monotonic() < deadline, "a revoked key was still served"
        await asyncio.sleep(0.2)
    assert await front.infer(**{"X-API-Key": KEY}) == 401
    assert await front.infer(**{"X-API-Key": OTHER_KEY}) == 200


async def test_a_changed_access_list_holds_at_once(front: Front) -> None:
    caller = bearer(front.tokens.token(front.namespace, "caller"))
    assert [await front.infer(**caller) for _ in range(2)] == [200, 200]
    assert front.served() == {200: 1}
    narrowed = {"serviceAccounts": [{"name": "bystander"}]}
    model = tars_model(PRIVATE, "builtin://echo", front.namespace, access=narrowed)
    assert await front.agent.ensure_loaded(model)
    assert await front.infer(**caller) == 403
    assert front.served() == {}
