"""The agent container's root filesystem is read-only, so every path it writes is a volume: found
when the agent pod first ran on a real node and Python's tempfile had nowhere to go."""

from __future__ import annotations

from tars_api import TarsNode
from tars_operator.builders import desired_daemonset


def test_agent_pod_has_a_writable_tmp_beside_its_read_only_root() -> None:
    tn = TarsNode.model_validate(
        {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": "t", "namespace": "ns"}}
    )
    pod = desired_daemonset(tn)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/var/cache/tars"):
        assert "emptyDir" in volumes[mounts[path]], path
