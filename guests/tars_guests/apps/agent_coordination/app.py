"""Agent coordination: splits a task into sub-tasks, routes each to a TARS function, runs them.

invoke: {"task": "...", "functions": {"reasoning": "autonomous-reasoning", "healing": "self-healing",
         "knowledge": "knowledge-query"}?, "max_subtasks": 4?}
-> {"plan": [{"n", "subtask", "role", "function", "routing_score"}], "results": [{"n", "function",
    "output" | "error"}], "summary", "host_calls"}

Sub-tasks come from the task's sentences and "then"/";" separators; each is routed by meaning
(nn.embed against role descriptions, keyword overlap without it) and run with functions.invoke,
which calls the named TarsModel (same namespace) in its own fresh sandbox.
"""

import tars_guestlib as lib
import wit_world

ROLE_DESCRIPTIONS = {
    "knowledge": "look up what the documentation and notes say about a topic and answer the question with sources",
    "healing": "repair an incident: a node failed, an outage, high latency, a security attack; remediate and recover",
    "reasoning": "decide between options, plan, weigh trade-offs and recommend the best choice",
}
# Leading verbs that say which role a sub-task wants, whatever its topic (added to the similarity).
ROLE_VERBS = {
    "knowledge": {"find", "look", "search", "what", "which", "explain", "why", "how", "summarise", "summarize"},
    "healing": {"fix", "repair", "recover", "remediate", "heal", "restore", "mitigate"},
    "reasoning": {"decide", "choose", "plan", "compare", "evaluate", "recommend", "pick"},
}
VERB_BONUS = 0.3
FILLER_WORDS = ("then ", "and ", "also ", "finally ", "next ")
DEFAULT_FUNCTIONS = {"knowledge": "knowledge-query", "healing": "self-healing", "reasoning": "autonomous-reasoning"}
HEALING_KINDS = (
    ("security_threat", ("attack", "breach", "intrusion", "suspicious", "security")),
    ("node_failure", ("node", "machine", "host", "heartbeat", "unreachable")),
    ("performance_degradation", ("slow", "latency", "load", "degraded", "p99", "throughput")),
)


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        task = lib.require_text(fields, "task", 4000)
        functions = dict(DEFAULT_FUNCTIONS)
        for role, name in lib.optional_object(fields, "functions").items():
            if role not in ROLE_DESCRIPTIONS:
                lib.fail(f"functions.{role}", f"is not a role; roles are {', '.join(ROLE_DESCRIPTIONS)}")
            functions[role] = lib.check_text(name, f"functions.{role}", 253)
        max_subtasks = lib.optional_int(fields, "max_subtasks", 4, 1, 8)
        return lib.as_function_output(coordinate(task, functions, max_subtasks), is_oip)


def decompose(task, limit):
    pieces = [task]
    for separator in (". ", "; ", " then ", " and then "):
        pieces = [part for piece in pieces for part in piece.split(separator)]
    subtasks = []
    for piece in pieces:
        text = piece.strip().rstrip(".")
        while text.lower().startswith(FILLER_WORDS):
            text = text.split(" ", 1)[1] if " " in text else ""
        if len(text) > 3:
            subtasks.append(text[0].upper() + text[1:])
    return subtasks[:limit] or [task]


def route(subtask, host_calls):
    roles = list(ROLE_DESCRIPTIONS)
    first_word = subtask.split()[0].lower() if subtask.split() else ""
    ranked = lib.rank_by_meaning(subtask, list(ROLE_DESCRIPTIONS.values()), host_calls)
    if ranked is None:
        ranked = [(float(len(lib.words(subtask) & lib.words(d))), i) for i, d in enumerate(ROLE_DESCRIPTIONS.values())]
    scored = [(score + (VERB_BONUS if first_word in ROLE_VERBS[roles[i]] else 0.0), i) for score, i in ranked]
    score, index = max(scored)
    return roles[index], score


def input_for(role, subtask, task):
    if role == "knowledge":
        return {"question": subtask, "top_k": 3}
    if role == "healing":
        words = lib.words(subtask)
        kind = next((k for k, keys in HEALING_KINDS if words & set(keys)), "unknown")
        issue = {"type": kind, "description": subtask, "severity": "medium"}
        node = next((w for w in subtask.split() if w.lower().startswith("node-")), None)
        if node:
            issue["node"] = node.strip(".,;:")
        return {"issue": issue}
    request = {"problem": subtask, "context": {"task": task[:500]}}
    options = options_in(subtask)
    if options:
        request["options"] = options
    return request


def options_in(subtask):
    """The alternatives a sub-task names: "between A and B", "A or B"; [] when it names none."""
    lowered = subtask.lower()
    if " between " in lowered:
        rest = subtask[lowered.index(" between ") + len(" between ") :]
        parts = rest.split(" and ", 1)
    elif " or " in lowered:
        parts = subtask.split(" or ", 1)
        parts[0] = (
            parts[0].split(" ", 1)[1] if parts[0].lower().startswith(tuple(ROLE_VERBS["reasoning"])) else parts[0]
        )
    else:
        return []
    options = [p.strip(" ,.") for p in parts if p.strip(" ,.")]
    return options if len(options) == 2 else []


def coordinate(task, functions, max_subtasks):
    host_calls: list[dict] = []
    plan = []
    for n, subtask in enumerate(decompose(task, max_subtasks), start=1):
        role, score = route(subtask, host_calls)
        plan.append(
            {"n": n, "subtask": subtask, "role": role, "function": functions[role], "routing_score": round(score, 4)}
        )
    results = []
    for step in plan:
        request = input_for(step["role"], step["subtask"], task)
        try:
            output = lib.call("functions.invoke", function=step["function"], input=request)
            results.append({"n": step["n"], "function": step["function"], "output": output})
        except lib.HostError as exc:
            results.append({"n": step["n"], "function": step["function"], "error": str(exc)})
    done = sum(1 for r in results if "output" in r)
    summary = f"{done} of {len(plan)} sub-tasks completed" + (
        "" if done == len(plan) else f"; {len(plan) - done} failed (see results)"
    )
    return {"task": task, "plan": plan, "results": results, "summary": summary, "host_calls": host_calls}
