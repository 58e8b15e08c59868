"""Knowledge query: searches the model's own document store and answers with numbered citations.

invoke: {"question": "...", "top_k": 3?, "documents": [{"id", "text"}]?, "generate": false?}
-> {"answer", "citations": [{"n", "id", "score", "excerpt"}], "documents_added", "stale", "host_calls"}

Documents given in the request are added first (knowledge.upsert). The answer is extractive: from
each cited document, the sentence sharing most words with the question, marked [n]; with
"generate": true, nn.generate writes a closing sentence (marked as generated, and as synthetic when
its weights are). The store is per tenant: this model never sees another model's documents.
"stale": true means the store was unreachable and the agent answered from its last copy.
"""

import json

import tars_guestlib as lib
import wit_world
from componentize_py_types import Err

MAX_DOCUMENTS = 32


def best_sentence(text, question_words):
    sentences = [s.strip() for s in text.replace("\n", " ").split(". ") if s.strip()]
    if not sentences:
        return text[:200]
    best = max(sentences, key=lambda s: len(lib.words(s) & question_words))
    return best if best.endswith(".") else best + "."


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        question = lib.require_text(fields, "question", 2000)
        top_k = lib.optional_int(fields, "top_k", 3, 1, 10)
        generate = fields.get("generate", False)
        if not isinstance(generate, bool):
            lib.fail("generate", "must be true or false")
        documents = fields.get("documents") or []
        if not isinstance(documents, list):
            lib.fail("documents", "must be a list of {id, text} objects")
        if len(documents) > MAX_DOCUMENTS:
            lib.fail("documents", f"has {len(documents)} items; the limit is {MAX_DOCUMENTS}")
        for i, doc in enumerate(documents):
            if not isinstance(doc, dict):
                lib.fail(f"documents[{i}]", "must be an object with id and text")
            if "id" not in doc:
                lib.fail(f"documents[{i}].id", "is required")
            lib.check_text(doc["id"], f"documents[{i}].id", 200)
            lib.check_text(doc.get("text"), f"documents[{i}].text")
        return lib.as_function_output(answer(question, top_k, documents, generate), is_oip)


def answer(question, top_k, documents, generate):
    host_calls: list[dict] = []
    added = 0
    if documents:
        try:
            added = lib.call("knowledge.upsert", documents=[{"id": d["id"], "text": d["text"]} for d in documents])[
                "upserted"
            ]
        except lib.HostError as exc:
            raise Err(json.dumps({"error": str(exc), "field": "documents"})) from None
    try:
        found = lib.call("knowledge.query", query=question, top_k=top_k)
    except lib.HostError as exc:
        raise Err(json.dumps({"error": str(exc)})) from None
    hits = found["hits"]
    question_words = lib.words(question)
    citations = []
    parts = []
    for n, hit in enumerate(hits, start=1):
        sentence = best_sentence(hit["text"], question_words)
        citations.append({"n": n, "id": hit["id"], "score": round(hit["score"], 4), "excerpt": sentence})
        parts.append(f"{sentence} [{n}]")
    if not hits:
        text = "The knowledge store holds no documents for this model, so there is nothing to cite."
    else:
        text = " ".join(parts)
    generated = None
    if generate and hits:
        prompt = f"Question: {question}\nFacts: {' '.join(c['excerpt'] for c in citations)}\nAnswer:"
        reply = lib.try_call("nn.generate", host_calls, prompt=prompt, max_tokens=48, stop=["\n"])
        if reply is not None:
            generated = {
                "text": reply["text"].strip(),
                "synthetic_weights": reply["synthetic_weights"],
                "notices": reply["notices"],
            }
    return {
        "question": question,
        "answer": text,
        "citations": citations,
        "generated": generated,
        "documents_added": added,
        "stale": bool(found.get("stale", False)),
        "host_calls": host_calls,
    }
