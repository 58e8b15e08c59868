"""Who may call a model: a TarsModel's ``spec.access``, and the pure decision over it.

The API types (:class:`ModelAccess`) go into the CRD; the decision (:func:`authorize`) is a pure
function shared by the node-agent and the gateway, so both refuse exactly the same callers. Proving
who a caller is (TokenReview, API-key Secrets) happens at the edges (``tars_common.auth``); this
module only sees the resulting :class:`Identity`.

Semantics, in one place:

- ``spec.access`` absent: the agent's ``defaultAccess`` decides. ``namespace`` (the default: secure
  unless told otherwise) treats the model as if it had ``access: {}``; ``open`` admits everyone and
  is only ever an explicit choice.
- ``access: {}`` (both ``serviceAccounts`` and ``namespaces`` empty): ServiceAccounts of the model's
  own namespace. Once either list names something, only what is listed is admitted.
- ``apiKeySecrets``: Secrets in the model's namespace; every entry of their ``data`` is one key.
  A key admits callers to the models that list its Secret, never to others.
- No or invalid credentials: 401. Valid credentials that the access list does not admit: 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from tars_api.meta import ApiModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
NamespaceName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
SecretName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]


class ServiceAccountRef(ApiModel):
    """A ServiceAccount allowed to call the model."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="ServiceAccount name.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Namespace of the ServiceAccount; empty means the model's own namespace.",
    )


class ModelAccess(ApiModel):
    """Callers allowed to reach the model; everyone else gets 401 (no valid credentials) or 403."""

    service_accounts: list[ServiceAccountRef] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "ServiceAccounts (bearer tokens checked with TokenReview) allowed to call the model. "
            "With namespaces also empty, every ServiceAccount of the model's own namespace is allowed."
        ),
    )
    namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=256,
        description="Namespaces whose ServiceAccounts may all call the model.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    api_key_secrets: list[SecretName] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Secrets in the model's namespace holding API keys for callers outside the cluster: every "
            "entry of a Secret's data is one key (sent as X-API-Key or Authorization: Bearer). "
            "Delete an entry to revoke its key."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class DefaultAccess(StrEnum):
    """What a model without ``spec.access`` admits when authentication is on."""

    OPEN = "open"  # everyone, credentials or not: an explicit choice, never the default
    NAMESPACE = "namespace"  # as ``access: {}``: authenticated ServiceAccounts of the model's namespace


# What a model without spec.access admits when nobody chose: secure by default (issue 17, item 10).
DEFAULT_ACCESS = DefaultAccess.NAMESPACE


@dataclass(frozen=True)
class Identity:
    """A proven caller. ``kind`` says how it was proven; anonymous means no credentials at all."""

    kind: Literal["serviceaccount", "user", "apikey", "anonymous"]
    name: str = ""
    # ServiceAccount: its namespace; API key: the namespace of the Secret that holds it.
    namespace: str = ""
    # API key only: the Secret holding it (``name`` is then "secret/entry").
    secret: str = ""

    def __str__(self) -> str:
        if self.kind == "anonymous":
            return "anonymous"
        if self.kind == "user":
            return f"user:{self.name}"
        return f"{self.kind}:{self.namespace}/{self.name}"


ANONYMOUS = Identity("anonymous")


def identity_from_username(username: str) -> Identity:
    """The Identity for a TokenReview username (``system:serviceaccount:NS:NAME`` or any user)."""
    if username.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, _, name = username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        if namespace and name:
            return Identity("serviceaccount", name=name, namespace=namespace)
    return Identity("user", name=username)


class Outcome(StrEnum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    # For the log line only: never sent to the caller, so a refusal says nothing about the model.
    reason: str

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED

    @property
    def status(self) -> int:
        return {Outcome.ALLOWED: 200, Outcome.UNAUTHENTICATED: 401, Outcome.FORBIDDEN: 403}[self.outcome]


def authorize(
    identity: Identity | None,
    access: ModelAccess | None,
    model_namespace: str,
    default: DefaultAccess = DEFAULT_ACCESS,
) -> Decision:
    """May ``identity`` call a model of ``model_namespace`` whose ``spec.access`` is ``access``?

    ``identity`` None means credentials were presented but did not verify (bad, expired or revoked
    token or key): 401 wherever credentials matter, i.e. everywhere but an open model.
    """
    if access is None:
        if default is DefaultAccess.OPEN:
            return Decision(Outcome.ALLOWED, "model has no spec.access and the default is open")
        access = ModelAccess()
    if identity is None:
        return Decision(Outcome.UNAUTHENTICATED, "credentials did not verify")
    if identity.kind == "anonymous":
        return Decision(Outcome.UNAUTHENTICATED, "no credentials")
    if identity.kind == "apikey":
        if identity.namespace == model_namespace and identity.secret in access.api_key_secrets:
            return Decision(Outcome.ALLOWED, f"API key from Secret {identity.secret}")
        return Decision(Outcome.FORBIDDEN, f"API key Secret {identity.namespace}/{identity.secret} not listed")
    if identity.kind != "serviceaccount":
        return Decision(Outcome.FORBIDDEN, f"{identity} is not a ServiceAccount")
    for ref in access.service_accounts:
        if ref.name == identity.name and (ref.namespace or model_namespace) == identity.namespace:
            return Decision(Outcome.ALLOWED, f"ServiceAccount {identity.namespace}/{identity.name} listed")
    namespaces = access.namespaces or ([] if access.service_accounts else [model_namespace])
    if identity.namespace in namespaces:
        return Decision(Outcome.ALLOWED, f"namespace {identity.namespace} allowed")
    return Decision(Outcome.FORBIDDEN, f"{identity} not in spec.access")
