"""Autonomous reasoning: weighs options against a problem and its context, and concludes.

invoke: {"problem": "...", "options": ["..."]?, "context": {...}?, "constraints": ["..."]?}
-> {"conclusion", "chosen_option", "confidence", "ranking": [...], "steps": [...], "host_calls": [...]}

Each option is scored by meaning (nn.embed: cosine to problem + context + knowledge), minus a
penalty for every constraint it appears to break (words shared with a "no ..."/"avoid ..." rule).
Without options, the guest lists the knowledge store's closest documents as the candidates.
"""

import json

import tars_guestlib as lib
import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        problem = lib.require_text(fields, "problem", 4000)
        options = lib.optional_text_list(fields, "options", 16, 500)
        constraints = lib.optional_text_list(fields, "constraints", 16, 300)
        context = lib.optional_object(fields, "context")
        if len(json.dumps(context)) > 4000:
            lib.fail("context", "is larger than 4000 characters of JSON")
        return lib.as_function_output(conclude(problem, options, constraints, context), is_oip)


def conclude(problem, options, constraints, context):
    host_calls: list[dict] = []
    steps = [{"step": "understand", "problem": problem[:500], "context_keys": sorted(context)}]
    knowledge = lib.try_call("knowledge.query", host_calls, query=problem, top_k=3)
    hits = (knowledge or {}).get("hits", [])
    steps.append({"step": "recall", "documents": [h["id"] for h in hits]})
    if not options:
        options = [h["text"][:500] for h in hits]
        steps.append({"step": "options", "source": "knowledge store", "count": len(options)})
    if not options:
        raise Err(
            json.dumps({"error": "options: none given and the knowledge store has no documents", "field": "options"})
        )
    query = " ".join([problem, json.dumps(context) if context else "", *(h["text"][:200] for h in hits[:2])])
    ranked = lib.rank_by_meaning(query, options, host_calls)
    if ranked is None:
        ranked = sorted(((float(len(lib.words(o) & lib.words(query))), i) for i, o in enumerate(options)), reverse=True)
    forbidden = [lib.words(c) - {"avoid", "not", "never", "don't", "without"} for c in constraints]
    scored = []
    for score, index in ranked:
        broken = [
            constraints[j] for j, bad in enumerate(forbidden) if bad and len(bad & lib.words(options[index])) >= 1
        ]
        scored.append((score - 0.25 * len(broken), index, broken))
    scored.sort(key=lambda item: item[0], reverse=True)
    steps.append({"step": "evaluate", "method": "meaning similarity minus 0.25 per broken constraint"})
    best_score, best, broken = scored[0]
    runner_up = scored[1][0] if len(scored) > 1 else best_score - 1.0
    confidence = round(max(0.0, min(1.0, 0.5 + (best_score - runner_up))), 4)
    steps.append({"step": "conclude", "chosen": options[best], "margin": round(best_score - runner_up, 4)})
    return {
        "conclusion": f"Best option for '{problem[:120]}': {options[best]}",
        "chosen_option": options[best],
        "confidence": confidence,
        "constraints_broken": broken,
        "ranking": [{"option": options[i], "score": round(s, 4), "breaks": b} for s, i, b in scored],
        "steps": steps,
        "host_calls": host_calls,
    }
