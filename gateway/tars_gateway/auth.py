"""Access control at the gateway: the agent's checks (``tars_common.auth``), fed with TarsModels read
from the API server.

The gateway refuses early (401/403 before any agent is picked or woken from zero) and still forwards
the caller's credentials, so the agent makes the same decision again: a request that reaches an agent
directly, past the gateway, is checked just the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from tars_api import GROUP, VERSION
from tars_api.access import ModelAccess
from tars_common.auth import AccessGuard, ApiKeySecrets, AuthConfig, ModelPolicy, TokenReviewer, auth_middleware
from tars_common.requested_model import requested_model

POLICY_TTL_S = 5.0
DECISIONS = Counter(
    "tars_gateway_auth_decisions", "Authorization decisions at the gateway, by model and outcome.", ["model", "outcome"]
)


class ModelPolicies:
    """spec.access of the namespace's TarsModels, read on demand and cached for a few seconds so an
    edited access list applies promptly without a watch."""

    def __init__(self, api: Any, namespace: str, ttl_s: float = POLICY_TTL_S) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[ModelPolicy | None, float]] = {}

    def _get_blocking(self, name: str) -> ModelPolicy | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj: dict[str, Any] = self._custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, self.namespace, "tarsmodels", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (obj.get("spec") or {}).get("access")
        # The CRD schema already validated it; a malformed one raises here and fails closed (500).
        access = ModelAccess.model_validate(raw) if raw is not None else None
        return ModelPolicy(self.namespace, name, access)

    async def get(self, name: str) -> ModelPolicy | None:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[1] > now:
            return cached[0]
        policy = await asyncio.to_thread(self._get_blocking, name)
        self._cache[name] = (policy, now + self._ttl_s)
        return policy


def policy_lookup(policies: ModelPolicies) -> Callable[[web.Request], Awaitable[ModelPolicy | None]]:
    async def lookup(request: web.Request) -> ModelPolicy | None:
        name = await requested_model(request)
        return await policies.get(name) if name is not None else None

    return lookup


def gateway_middleware(guard: AccessGuard, policies: ModelPolicies) -> Any:
    return auth_middleware(guard, policy_lookup(policies))


def gateway_guard(config: AuthConfig, api: Any) -> AccessGuard:
    """The agent's guard, counting into tars_gateway_auth_decisions_total (the gateway's registry)."""
    return AccessGuard(config, TokenReviewer(api, config), ApiKeySecrets(api, config), decisions=DECISIONS)
