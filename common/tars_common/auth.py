"""Authentication and per-model authorization for the data plane (node-agent and gateway).

Credentials, checked at the edge, turn into an :class:`~tars_api.access.Identity`:

- ``Authorization: Bearer <JWT>``: a Kubernetes ServiceAccount token, verified with the TokenReview
  API (``authentication.k8s.io/v1``). Results are cached briefly, keyed by a SHA-256 of the token
  (never the token itself), and never beyond the token's own ``exp``.
- ``X-API-Key: <key>`` (or a bearer value that is not a JWT): an API key, looked up in the Secrets
  the model's ``spec.access.apiKeySecrets`` names and compared in constant time. Secrets are cached
  for a few seconds, so deleting a key revokes it within that time.

The decision itself is :func:`tars_api.access.authorize` (pure); :class:`AccessGuard` feeds it and
:func:`auth_middleware` turns a refusal into 401/403 with a body that says nothing about the model.
Every decision is logged (logger ``tars_common.auth``) and counted in
``tars_agent_auth_decisions_total{model,outcome}`` (the gateway counts into its own metric).

Switch: authentication is off in standalone mode and on in cluster mode unless told otherwise
(``--auth``); health routes, ``/v2`` and ``/openapi.json`` stay open; ``/metrics`` needs a valid
ServiceAccount token only with ``--metrics-auth``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from tars_api.access import (
    ANONYMOUS,
    DEFAULT_ACCESS,
    Decision,
    DefaultAccess,
    Identity,
    ModelAccess,
    Outcome,
    authorize,
    identity_from_username,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]

API_KEY_HEADER = "X-API-Key"
# Routes that never need credentials: probes, server metadata, the API description.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json"})
METRICS_PATH = "/metrics"
_MAX_CACHE_ENTRIES = 10000


@dataclass
class AuthConfig:
    enabled: bool = False
    default_access: DefaultAccess = DEFAULT_ACCESS
    metrics_require_token: bool = False
    token_cache_ttl_s: float = 30.0
    # Failed reviews are cached too, shorter, so a client hammering with a bad token does not turn
    # into a TokenReview flood against the API server.
    negative_cache_ttl_s: float = 5.0
    secret_cache_ttl_s: float = 5.0
    # Audiences the token must carry (TokenReview spec.audiences); empty means the API server's own.
    audiences: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Configuration arrives as plain strings (flags, ConfigMaps); the decision compares enums.
        self.default_access = DefaultAccess(self.default_access)


# -- credentials (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    kind: str  # "token", "apikey" or "none"
    value: str = ""


def looks_like_jwt(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 3 and all(parts) and value.startswith("eyJ")


def credential_from(headers: Mapping[str, str]) -> Credential:
    """The caller's credential: an explicit API key wins; a bearer value is a token when it is a JWT."""
    if key := headers.get(API_KEY_HEADER, "").strip():
        return Credential("apikey", key)
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return Credential("none")
    return Credential("token" if looks_like_jwt(value) else "apikey", value)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying (only to bound how long a review is cached)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) if isinstance(claims, dict) and "exp" in claims else None
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matching_key(presented: str, entries: Mapping[str, bytes]) -> str | None:
    """The entry whose value equals ``presented``; every entry is compared, in constant time each."""
    wanted = presented.encode()
    found = None
    for entry, value in entries.items():
        if hmac.compare_digest(value.strip(), wanted) and found is None:
            found = entry
    return found


# -- verification against the API server --------------------------------------------------------


class TokenReviewer:
    """ServiceAccount tokens checked with TokenReview; results cached by token hash."""

    def __init__(self, api: Any, config: AuthConfig, clock: Clock = time.time) -> None:
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api)
        self._config = config
        self._clock = clock
        self._cache: dict[str, tuple[Identity | None, float]] = {}
        self.reviews = 0  # API calls made, for tests and debugging

    def _review_blocking(self, token: str) -> Identity | None:
        from kubernetes import client

        spec = client.V1TokenReviewSpec(token=token, audiences=list(self._config.audiences) or None)
        self.reviews += 1
        result = self._auth.create_token_review(client.V1TokenReview(spec=spec))
        status = result.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            log.info("token rejected by TokenReview: %s", (status.error if status else None) or "not authenticated")
            return None
        if self._config.audiences and not set(self._config.audiences) & set(status.audiences or []):
            return None
        return identity_from_username(status.user.username)

    async def review(self, token: str) -> Identity | None:
        key = token_hash(token)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        identity = await asyncio.to_thread(self._review_blocking, token)
        ttl = self._config.token_cache_ttl_s if identity is not None else self._config.negative_cache_ttl_s
        expires = now + ttl
        if (exp := token_expiry(token)) is not None:
            expires = min(expires, exp)
        if len(self._cache) >= _MAX_CACHE_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= _MAX_CACHE_ENTRIES:
                self._cache.clear()
        self._cache[key] = (identity, expires)
        return identity


class ApiKeySecrets:
    """API keys: the ``data`` entries of Secrets, read through a short cache."""

    def __init__(self, api: Any, config: AuthConfig, clock: Clock = time.monotonic) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self._config = config
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[dict[str, bytes], float]] = {}

    def _read_blocking(self, namespace: str, name: str) -> dict[str, bytes]:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status in (403, 404):
                log.warning("API-key Secret %s/%s unreadable (%s)", namespace, name, exc.status)
                return {}
            raise
        entries = {}
        for entry, encoded in (secret.data or {}).items():
            try:
                entries[entry] = base64.b64decode(encoded)
            except (binascii.Error, ValueError):
                continue
        return entries

    async def entries(self, namespace: str, name: str) -> dict[str, bytes]:
        now = self._clock()
        cached = self._cache.get((namespace, name))
        if cached is not None and cached[1] > now:
            return cached[0]
        entries = await asyncio.to_thread(self._read_blocking, namespace, name)
        self._cache[(namespace, name)] = (entries, now + self._config.secret_cache_ttl_s)
        return entries

    async def identify(self, key: str, namespace: str, secrets: list[str]) -> Identity | None:
        for name in secrets:
            entry = matching_key(key, await self.entries(namespace, name))
            if entry is not None:
                return Identity("apikey", name=f"{name}/{entry}", namespace=namespace, secret=name)
        return None


# -- the guard ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPolicy:
    """What the guard needs to know about a model: where it lives and its spec.access."""

    namespace: str
    name: str
    access: ModelAccess | None

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class AccessGuard:
    config: AuthConfig
    tokens: TokenReviewer | None = None
    api_keys: ApiKeySecrets | None = None
    decisions: Counter | None = field(default=None)

    @classmethod
    def from_api(cls, config: AuthConfig, api: Any, registry: CollectorRegistry | None) -> AccessGuard:
        guard = cls(config, TokenReviewer(api, config), ApiKeySecrets(api, config))
        guard.attach_metrics(registry)
        return guard

    def attach_metrics(self, registry: CollectorRegistry | None, prefix: str = "tars_agent") -> None:
        self.decisions = Counter(
            f"{prefix}_auth_decisions",
            "Authorization decisions on model routes, by model and outcome.",
            ["model", "outcome"],
            registry=registry,
        )

    async def identify(self, credential: Credential, policy: ModelPolicy | None) -> Identity | None:
        """The caller, ANONYMOUS without credentials, None when credentials do not verify."""
        if credential.kind == "none":
            return ANONYMOUS
        if credential.kind == "token":
            return await self.tokens.review(credential.value) if self.tokens is not None else None
        secrets = policy.access.api_key_secrets if policy is not None and policy.access is not None else []
        if self.api_keys is None or policy is None or not secrets:
            return None
        return await self.api_keys.identify(credential.value, policy.namespace, secrets)

    async def decide(self, headers: Mapping[str, str], policy: ModelPolicy) -> Decision:
        credential = credential_from(headers)
        if policy.access is None and self.config.default_access is DefaultAccess.OPEN:
            # Nothing to check against: skip the TokenReview an open model would not use anyway.
            decision = authorize(ANONYMOUS, None, policy.namespace, self.config.default_access)
        else:
            identity = await self.identify(credential, policy)
            decision = authorize(identity, policy.access, policy.namespace, self.config.default_access)
            who = str(identity) if identity is not None else f"invalid {credential.kind}"
            log.info("auth %s %s for %s: %s", decision.outcome.value, policy.label, who, decision.reason)
        if self.decisions is not None:
            self.decisions.labels(policy.label, decision.outcome.value).inc()
        return decision

    async def metrics_allowed(self, headers: Mapping[str, str]) -> Decision:
        """/metrics with --metrics-auth: any valid ServiceAccount token (Prometheus's own)."""
        credential = credential_from(headers)
        if credential.kind != "token" or self.tokens is None:
            return Decision(Outcome.UNAUTHENTICATED, "metrics need a ServiceAccount token")
        identity = await self.tokens.review(credential.value)
        if identity is None:
            return Decision(Outcome.UNAUTHENTICATED, "token did not verify")
        return Decision(Outcome.ALLOWED, f"metrics for {identity}")


def refusal(decision: Decision) -> web.Response:
    """401/403 with a fixed body: nothing about the model, its access list or why."""
    if decision.outcome is Outcome.UNAUTHENTICATED:
        return web.json_response(
            {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="tars"'}
        )
    return web.json_response({"error": "forbidden"}, status=403)


PolicyLookup = Callable[[web.Request], Awaitable[ModelPolicy | None]]


def auth_middleware(guard: AccessGuard, policy_for: PolicyLookup) -> Any:
    """aiohttp middleware: model routes are authorized by ``policy_for`` (None: unknown model, the
    handler answers 404); open paths pass; /metrics optionally needs a token."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guard.config.enabled or request.path in OPEN_PATHS:
            return await handler(request)
        if request.path == METRICS_PATH:
            if guard.config.metrics_require_token:
                decision = await guard.metrics_allowed(request.headers)
                if not decision.allowed:
                    return refusal(decision)
            return await handler(request)
        policy = await policy_for(request)
        if policy is not None:
            decision = await guard.decide(request.headers, policy)
            if not decision.allowed:
                return refusal(decision)
        return await handler(request)

    return middleware
