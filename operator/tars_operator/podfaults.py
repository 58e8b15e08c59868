"""Why a TarsNode's agent pods do not run, read from their container statuses, and how many nodes
could run one: what the TarsNode's conditions tell a platform engineer, with what to do next.

Pure functions over compact pod records (what the pods index keeps), no API calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tars_operator.conditions import Cond

# Container waiting/terminated reasons the kubelet reports, and what to do about each.
NEXT_STEP = {
    "ErrImagePull": "check spec.agent.image (repository and tag) and that the node can pull it",
    "ImagePullBackOff": "check spec.agent.image (repository and tag) and that the node can pull it",
    "InvalidImageName": "spec.agent.image is not a valid image reference",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never: load it onto the node",
    "CrashLoopBackOff": "the agent keeps exiting: read its log (kubectl logs -n NAMESPACE POD --previous)",
    "CreateContainerConfigError": "a ConfigMap, Secret or volume the pod needs is missing",
    "CreateContainerError": "the runtime could not create the container: see the pod's events",
    "RunContainerError": "the runtime could not start the container: see the pod's events",
    "Error": "the agent exited with an error: read its log (kubectl logs -n NAMESPACE POD --previous)",
    "OOMKilled": "the agent ran out of memory: raise spec.agent.resources.limits.memory",
}


@dataclass(frozen=True)
class PodRecord:
    """An agent pod as far as its health goes."""

    name: str
    node: str
    reason: str  # the worst container reason, "" when every container runs
    message: str
    restarts: int


def pod_record(body: dict[str, Any]) -> PodRecord:
    status = body.get("status", {})
    reason, message, restarts = "", "", 0
    # Init containers first: a pod whose init container cannot be pulled or crashes never starts its
    # agent container, which only says PodInitializing.
    for container in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        restarts += int(container.get("restartCount", 0))
        state = container.get("state", {})
        last = container.get("lastState", {}).get("terminated", {})
        waiting = state.get("waiting", {})
        terminated = state.get("terminated", {})
        if waiting.get("reason") in NEXT_STEP:
            reason, message = waiting["reason"], waiting.get("message", "")
            if reason == "CrashLoopBackOff" and last:
                message = f"last exit {last.get('exitCode')} ({last.get('reason', '')}): {message}"
        elif terminated.get("reason") in NEXT_STEP and not reason:
            reason = terminated["reason"]
            message = terminated.get("message", "") or f"exit {terminated.get('exitCode')}"
        elif _restarting_after_failures(container) and not reason:
            # Between back-offs a crash-looping container runs for a moment; it is still crash-looping.
            reason = "CrashLoopBackOff"
            message = (
                f"last exit {last.get('exitCode')} ({last.get('reason', '')}), {container['restartCount']} restarts"
            )
    return PodRecord(
        name=body.get("metadata", {}).get("name", ""),
        node=body.get("spec", {}).get("nodeName", ""),
        reason=reason,
        message=message.strip(),
        restarts=restarts,
    )


# Restarts after which a container that failed and is not ready yet counts as crash-looping: from the
# first, so the condition does not flap between a failed exit and the next one.
CRASH_LOOP_RESTARTS = 1


def _restarting_after_failures(container: dict[str, Any]) -> bool:
    last = container.get("lastState", {}).get("terminated", {})
    return (
        not container.get("ready", False)
        and int(container.get("restartCount", 0)) >= CRASH_LOOP_RESTARTS
        and int(last.get("exitCode", 0) or 0) != 0
    )


def pods_condition(namespace: str, pods: list[PodRecord]) -> Cond:
    """PodsHealthy: False, with the reason of the first failing pod and the next step, when any fails."""
    failing = sorted((p for p in pods if p.reason), key=lambda p: p.name)
    if not failing:
        return Cond("PodsHealthy", True, "ContainersRunning", f"{len(pods)} agent pods, none failing")
    first = failing[0]
    step = NEXT_STEP[first.reason].replace("NAMESPACE", namespace).replace("POD", first.name)
    others = f" (and {len(failing) - 1} more pods)" if len(failing) > 1 else ""
    detail = f": {first.message}" if first.message else ""
    return Cond(
        "PodsHealthy",
        False,
        first.reason,
        f"pod {first.name} on node {first.node or '?'}{others}: {first.reason}{detail}. Next: {step}",
    )


def eligible_message(eligible: int, nodes: int) -> str:
    """How many of the cluster's nodes can run an agent (KVM label, nodeSelector, tolerations)."""
    return f"{eligible} of {nodes} nodes eligible (tars.hyperlight.dev/kvm=true and the TarsNode's nodeSelector)"
