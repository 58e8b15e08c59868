"""What the operator renders for the knowledge store: the agent's state directory on the node
(owned by the agent's user), the backend in the agent's configuration, and the PostgreSQL DSN from
the TarsNode's Secret as an environment variable (never in the ConfigMap)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tars_api import TarsNode
from tars_operator import builders
from tests.operator.test_builders import tarsnode


def pod(tn: TarsNode) -> dict[str, Any]:
    spec: dict[str, Any] = builders.desired_daemonset(tn)["spec"]["template"]["spec"]
    return spec


def test_sqlite_state_lives_on_the_node_and_belongs_to_the_agent() -> None:
    spec = pod(tarsnode(knowledge={"stateHostPath": "/srv/tars/state"}))
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["hostPath"] == {"path": "/srv/tars/state", "type": "DirectoryOrCreate"}
    agent = spec["containers"][0]
    assert {"name": "state", "mountPath": builders.STATE_DIR} in agent["volumeMounts"]
    assert agent["securityContext"]["runAsNonRoot"] is True
    (owner,) = spec["initContainers"]
    assert owner["command"][-2:] == [builders.STATE_DIR, str(builders.AGENT_UID)]
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert not any(e["name"] == "TARS_KNOWLEDGE_DSN" for e in agent["env"])
    config = yaml.safe_load(builders.desired_configmap(tarsnode())["data"][builders.AGENT_CONFIG_KEY])
    assert config["knowledge"] == {"backend": "sqlite", "stateDir": builders.STATE_DIR, "deletionGracePeriod": "24h"}


def test_postgres_dsn_comes_from_the_secret() -> None:
    tn = tarsnode(knowledge={"backend": "postgres", "dsnSecretRef": {"name": "kb-db"}, "deletionGracePeriod": "1h"})
    env = pod(tn)["containers"][0]["env"]
    assert {"name": "TARS_KNOWLEDGE_DSN", "valueFrom": {"secretKeyRef": {"name": "kb-db", "key": "dsn"}}} in env
    rendered = builders.desired_configmap(tn)["data"][builders.AGENT_CONFIG_KEY]
    assert yaml.safe_load(rendered)["knowledge"]["backend"] == "postgres" and "kb-db" not in rendered


def test_postgres_without_a_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="dsnSecretRef"):
        tarsnode(knowledge={"backend": "postgres"})
