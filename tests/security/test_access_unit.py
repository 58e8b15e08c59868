"""The pure parts: the authorization decision, credential parsing, key matching, flags."""

from __future__ import annotations

import base64
import json

import pytest

from tars_agent.main import auth_config, parse_args
from tars_api import TarsModel
from tars_api.access import ANONYMOUS, DefaultAccess, Identity, ModelAccess, Outcome, authorize, identity_from_username
from tars_common.auth import credential_from, looks_like_jwt, matching_key, token_expiry

SA = Identity("serviceaccount", name="app", namespace="team-a")


def access(**spec: object) -> ModelAccess:
    return ModelAccess.model_validate(spec)


@pytest.mark.parametrize(
    ("identity", "spec", "default", "outcome"),
    [
        (ANONYMOUS, None, DefaultAccess.OPEN, Outcome.ALLOWED),
        (None, None, DefaultAccess.OPEN, Outcome.ALLOWED),  # open: credentials are not even looked at
        (ANONYMOUS, None, DefaultAccess.NAMESPACE, Outcome.UNAUTHENTICATED),
        (SA, None, DefaultAccess.NAMESPACE, Outcome.ALLOWED),
        (Identity("serviceaccount", name="app", namespace="team-b"), None, DefaultAccess.NAMESPACE, Outcome.FORBIDDEN),
        (None, {}, DefaultAccess.OPEN, Outcome.UNAUTHENTICATED),
        (ANONYMOUS, {}, DefaultAccess.OPEN, Outcome.UNAUTHENTICATED),
        (SA, {}, DefaultAccess.OPEN, Outcome.ALLOWED),
        (SA, {"serviceAccounts": [{"name": "other"}]}, DefaultAccess.OPEN, Outcome.FORBIDDEN),
        (SA, {"serviceAccounts": [{"name": "app"}]}, DefaultAccess.OPEN, Outcome.ALLOWED),
        (SA, {"serviceAccounts": [{"name": "app", "namespace": "team-b"}]}, DefaultAccess.OPEN, Outcome.FORBIDDEN),
        (SA, {"namespaces": ["team-b"]}, DefaultAccess.OPEN, Outcome.FORBIDDEN),
        (SA, {"namespaces": ["team-b", "team-a"]}, DefaultAccess.OPEN, Outcome.ALLOWED),
        (SA, {"apiKeySecrets": ["k"]}, DefaultAccess.OPEN, Outcome.ALLOWED),  # no SA list: own namespace
        (Identity("user", name="admin"), {}, DefaultAccess.OPEN, Outcome.FORBIDDEN),
        (Identity("apikey", "k/ci", "team-a", "k"), {"apiKeySecrets": ["k"]}, DefaultAccess.OPEN, Outcome.ALLOWED),
        (Identity("apikey", "k/ci", "team-b", "k"), {"apiKeySecrets": ["k"]}, DefaultAccess.OPEN, Outcome.FORBIDDEN),
        (Identity("apikey", "j/ci", "team-a", "j"), {"apiKeySecrets": ["k"]}, DefaultAccess.OPEN, Outcome.FORBIDDEN),
    ],
)
def test_authorize(identity: Identity | None, spec: dict | None, default: DefaultAccess, outcome: Outcome) -> None:
    decision = authorize(identity, access(**spec) if spec is not None else None, "team-a", default)
    assert decision.outcome is outcome, decision.reason
    assert decision.status == {"allowed": 200, "unauthenticated": 401, "forbidden": 403}[outcome.value]


def test_identity_from_username() -> None:
    assert identity_from_username("system:serviceaccount:team-a:app") == SA
    assert identity_from_username("kubernetes-admin") == Identity("user", name="kubernetes-admin")
    assert identity_from_username("system:serviceaccount:broken").kind == "user"


def _jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"


def test_credentials() -> None:
    token = _jwt({"exp": 1700000000})
    assert looks_like_jwt(token) and not looks_like_jwt("tars-key")
    assert credential_from({"Authorization": f"Bearer {token}"}).kind == "token"
    assert credential_from({"Authorization": "Bearer tars-key"}).kind == "apikey"
    assert credential_from({"Authorization": f"Bearer {token}", "X-API-Key": "k"}).value == "k"
    assert credential_from({"Authorization": "Basic dXNlcjpwdw=="}).kind == "none"
    assert credential_from({}).kind == "none"
    assert token_expiry(token) == 1700000000
    assert token_expiry("eyJ.not-base64!.x") is None


def test_matching_key() -> None:
    entries = {"ci": b"secret-1\n", "partner": b"secret-2"}
    assert matching_key("secret-1", entries) == "ci"  # a trailing newline from `kubectl create secret --from-file`
    assert matching_key("secret-2", entries) == "partner"
    assert matching_key("secret-", entries) is None


def test_access_in_the_api_and_crd_validation() -> None:
    spec = {"nodeRef": {"name": "n"}, "kind": "function", "source": "builtin://echo"}
    model = TarsModel.model_validate(
        {"metadata": {"name": "m"}, "spec": {**spec, "access": {"serviceAccounts": [{"name": "app"}]}}}
    )
    assert model.spec.access is not None and model.spec.access.service_accounts[0].namespace is None
    assert TarsModel.model_validate({"metadata": {"name": "m"}, "spec": spec}).spec.access is None
    with pytest.raises(ValueError, match="namespaces"):
        TarsModel.model_validate({"metadata": {"name": "m"}, "spec": {**spec, "access": {"namespaces": ["Bad_NS"]}}})


def test_auth_switch() -> None:
    assert not auth_config(parse_args(["--standalone"])).enabled
    assert auth_config(parse_args([])).enabled
    assert not auth_config(parse_args(["--auth", "off"])).enabled
    flags = ["--standalone", "--auth", "on", "--default-access", "namespace", "--metrics-auth"]
    strict = auth_config(parse_args(flags))
    assert strict.enabled and strict.default_access is DefaultAccess.NAMESPACE and strict.metrics_require_token
