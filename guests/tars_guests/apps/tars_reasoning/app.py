"""TARS Reasoning: analyse a situation, decide, act, and report the whole trace.

invoke: {"situation": "...", "goal": "..."?, "actions": ["..."]?, "max_tokens": 48?, "generator": "name"?}
-> {"trace": [{"step": "situation"}, {"step": "decision"}, {"step": "action"}, {"step": "outcome"}],
    "decision": ..., "host_calls": [...]}

Analysis uses nn.sentiment (urgency), knowledge.query (what the tenant's documents say) and
nn.embed (which candidate action fits the situation best); the action's rationale comes from
nn.generate (with the text-generation TarsModel named by "generator", else the host's choice).
A capability that is not allowed is noted in the trace and the guest carries on with what it has,
so the trace always says what the decision rested on.
"""

import tars_guestlib as lib
import wit_world

DEFAULT_ACTIONS = [
    "scale out: add replicas to absorb more load",
    "restart the failing component and watch its health",
    "isolate the affected workload and alert security",
    "fail over to a healthy node",
    "observe: keep monitoring, no change needed",
]
URGENT_WORDS = {"down", "outage", "failed", "failure", "crash", "breach", "attack", "critical", "error", "timeout"}


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        situation = lib.require_text(fields, "situation", 4000)
        goal = lib.check_text(fields["goal"], "goal", 1000) if fields.get("goal") is not None else ""
        actions = lib.optional_text_list(fields, "actions", 12, 300) or DEFAULT_ACTIONS
        max_tokens = lib.optional_int(fields, "max_tokens", 48, 1, 512)
        generator = lib.check_text(fields["generator"], "generator", 253) if fields.get("generator") else None
        return lib.as_function_output(reason(situation, goal, actions, max_tokens, generator), is_oip)


def reason(situation, goal, actions, max_tokens, generator):
    host_calls: list[dict] = []
    sentiment = lib.try_call("nn.sentiment", host_calls, text=situation)
    compound = sentiment["compound"] if sentiment else 0.0
    urgent_terms = sorted(lib.words(situation) & URGENT_WORDS)
    urgency = (
        "high" if compound <= -0.5 or len(urgent_terms) >= 2 else "medium" if compound < 0 or urgent_terms else "low"
    )
    knowledge = lib.try_call("knowledge.query", host_calls, query=situation, top_k=3)
    evidence = [
        {"id": h["id"], "score": round(h["score"], 4), "text": h["text"][:300]}
        for h in (knowledge or {}).get("hits", [])
    ]
    analysis = {
        "step": "situation",
        "summary": situation[:500],
        "goal": goal or None,
        "sentiment": compound,
        "urgency": urgency,
        "urgent_terms": urgent_terms,
        "evidence": evidence,
    }

    query = situation + (" Goal: " + goal if goal else "") + " " + " ".join(e["text"] for e in evidence[:2])
    ranked = lib.rank_by_meaning(query, actions, host_calls)
    if ranked is None:
        overlap = [(len(lib.words(a) & lib.words(query)), i) for i, a in enumerate(actions)]
        ranked = sorted(((float(s), i) for s, i in overlap), reverse=True)
        method = "keyword overlap (nn.embed unavailable)"
    else:
        method = "cosine similarity of MiniLM embeddings"
    best_score, best = ranked[0]
    decision = {
        "step": "decision",
        "chosen": actions[best],
        "method": method,
        "score": round(best_score, 4),
        "alternatives": [{"action": actions[i], "score": round(s, 4)} for s, i in ranked[1:4]],
    }

    prompt = f"Situation: {situation[:400]}\nDecision: {actions[best]}\nRationale:"
    generate_args = {"prompt": prompt, "max_tokens": max_tokens, "stop": ["\n\n"]}
    if generator:
        generate_args["model"] = generator
    generated = lib.try_call("nn.generate", host_calls, **generate_args)
    action = {
        "step": "action",
        "action": actions[best],
        "rationale": generated["text"].strip() if generated else None,
        "generation": {k: generated[k] for k in ("finish_reason", "synthetic_weights", "notices")}
        if generated
        else None,
    }
    lib.try_call("log.write", host_calls, message=f"tars-reasoning decided: {actions[best]} (urgency {urgency})")
    outcome = {
        "step": "outcome",
        "status": "decided",
        "urgency": urgency,
        "confidence": round(max(0.0, min(1.0, best_score)), 4),
        "expected_effect": f"{actions[best]} should address: {situation[:160]}",
        "degraded": [c["capability"] for c in host_calls],
    }
    return {"decision": actions[best], "trace": [analysis, decision, action, outcome], "host_calls": host_calls}
