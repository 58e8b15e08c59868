"""Self-healing: diagnoses an issue and answers with a remediation plan, asking the operator for help.

invoke: {"issue": {"type": "performance_degradation" | "security_threat" | "node_failure" | "unknown",
                   "model": "name"?, "node": "name"?, "severity": "low|medium|high|critical"?,
                   "description": "..."?, "metrics": {"p99_ms", "error_rate", "cpu", "replicas"}?}}
-> {"issue_type", "classified_as", "severity", "diagnosis", "remediation": [...],
    "operator_requests": [{"request", "response" | "error"}], "status", "host_calls"}

For "unknown", the description is classified by meaning (nn.embed) against the known kinds. Scaling,
placement and quarantine requests go to the operator through operator.request; without that
capability the plan is returned with status "needs-operator".
"""

import tars_guestlib as lib
import wit_world

ISSUE_TYPES = ("performance_degradation", "security_threat", "node_failure", "unknown")
SEVERITIES = ("low", "medium", "high", "critical")
KIND_DESCRIPTIONS = {
    "performance_degradation": "slow responses, high latency, overloaded, queueing, cpu saturated, throughput dropped",
    "security_threat": "intrusion, attack, suspicious access, breach, malware, unauthorised requests, exfiltration",
    "node_failure": "node down, machine lost, kernel panic, heartbeat missing, lease expired, unreachable host",
}
MAX_EXTRA_REPLICAS = 10


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        issue = fields.get("issue")
        if issue is None:
            lib.fail("issue", "is required")
        if not isinstance(issue, dict):
            lib.fail("issue", f"must be an object, not {type(issue).__name__}")
        kind = issue.get("type")
        if kind not in ISSUE_TYPES:
            lib.fail("issue.type", f"must be one of {', '.join(ISSUE_TYPES)}, not {kind!r}")
        severity = issue.get("severity", "medium")
        if severity not in SEVERITIES:
            lib.fail("issue.severity", f"must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        description = (
            lib.check_text(issue["description"], "issue.description", 2000) if issue.get("description") else ""
        )
        model = lib.check_text(issue["model"], "issue.model", 253) if issue.get("model") else None
        node = lib.check_text(issue["node"], "issue.node", 253) if issue.get("node") else None
        metrics = lib.optional_object(issue, "metrics")
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                lib.fail(f"issue.metrics.{key}", "must be a number")
        if kind == "unknown" and not description:
            lib.fail("issue.description", "is required when issue.type is unknown")
        return lib.as_function_output(heal(kind, severity, description, model, node, metrics), is_oip)


def classify(description, host_calls):
    ranked = lib.rank_by_meaning(description, list(KIND_DESCRIPTIONS.values()), host_calls)
    kinds = list(KIND_DESCRIPTIONS)
    if ranked is None:
        overlaps = [(len(lib.words(description) & lib.words(d)), i) for i, d in enumerate(KIND_DESCRIPTIONS.values())]
        score, index = max(overlaps)
        return (kinds[index], float(score)) if score > 0 else ("unknown", 0.0)
    score, index = ranked[0]
    # Below this, the description is not close to any known kind: escalate rather than guess.
    return (kinds[index], score) if score >= 0.2 else ("unknown", score)


def plan_for(kind, severity, model, node, metrics):
    """(diagnosis, remediation steps, operator requests) for a classified issue."""
    urgent = severity in ("high", "critical")
    if kind == "performance_degradation":
        replicas = int(metrics.get("replicas", 1))
        extra = min(MAX_EXTRA_REPLICAS, max(1, replicas // 2 + (2 if urgent else 1)))
        diagnosis = "load exceeds what the current replicas serve"
        if "p99_ms" in metrics:
            diagnosis += f" (p99 {metrics['p99_ms']} ms)"
        steps = [
            f"scale {model or 'the model'} from {replicas} to {replicas + extra} replicas",
            "re-check p99 after one stable window",
        ]
        requests = (
            [{"action": "scale", "model": model, "replicas": replicas + extra, "reason": diagnosis}] if model else []
        )
        return diagnosis, steps, requests
    if kind == "security_threat":
        diagnosis = "suspicious activity: contain first, investigate second"
        steps = [
            "quarantine the affected model (stop serving, keep evidence)",
            "rotate credentials it could reach",
            "page security on-call",
        ]
        requests = [{"action": "quarantine", "model": model, "reason": diagnosis}] if model else []
        return diagnosis, steps, requests
    if kind == "node_failure":
        diagnosis = f"node {node or '(unnamed)'} stopped heartbeating: its placements must move"
        steps = [
            f"cordon {node or 'the node'}",
            "re-place its models on healthy agents",
            "replace the node if it does not return",
        ]
        requests = [{"action": "replace-placements", "node": node, "reason": diagnosis}] if node else []
        return diagnosis, steps, requests
    diagnosis = "the issue matches no known kind: gather data and escalate"
    return diagnosis, ["collect logs and metrics around the time of the issue", "escalate to a human operator"], []


def heal(kind, severity, description, model, node, metrics):
    host_calls: list[dict] = []
    classified, score = (kind, 1.0)
    if kind == "unknown":
        classified, score = classify(description, host_calls)
    diagnosis, steps, requests = plan_for(classified, severity, model, node, metrics)
    knowledge = (
        lib.try_call("knowledge.query", host_calls, query=description or classified.replace("_", " "), top_k=2)
        if description
        else None
    )
    runbooks = [{"id": h["id"], "score": round(h["score"], 4)} for h in (knowledge or {}).get("hits", [])]
    results = []
    for request in requests:
        reply = lib.try_call("operator.request", host_calls, **request)
        results.append(
            {"request": request, "response": reply}
            if reply is not None
            else {"request": request, "error": host_calls[-1]["error"]}
        )
    if classified == "unknown":
        status = "escalated"
    elif requests and all("response" in r for r in results):
        status = "remediation-requested"
    elif requests:
        status = "needs-operator"
    else:
        status = "plan-only"
    return {
        "issue_type": kind,
        "classified_as": classified,
        "classification_score": round(score, 4),
        "severity": severity,
        "diagnosis": diagnosis,
        "remediation": steps,
        "runbooks": runbooks,
        "operator_requests": results,
        "status": status,
        "host_calls": host_calls,
    }
