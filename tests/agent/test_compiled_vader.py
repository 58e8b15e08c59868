"""The compiled VADER guest (guests/compiled/vader, Rust) against vaderSentiment itself, in real sandboxes.

Scores must be equal, not close: on the reference sentences the Python guest is checked on, on
vaderSentiment's own demo sentences, and on sentences made to hit every rule (boosters, negations,
"but", "least", "no", idioms, capitals, punctuation, emojis). Requests and errors are the Python
guest's.
"""

from __future__ import annotations

import json
import random

import pytest
from vaderSentiment.vaderSentiment import BOOSTER_DICT, NEGATE, SPECIAL_CASES, SentimentIntensityAnalyzer

from tars_agent.sandbox.base import GuestFailure, GuestSource, HostCallRefused, Limits, PreparedGuest, SandboxBackend
from tars_guests.compiled import build_compiled
from tests.models.test_guests import SENTENCES

ANALYZER = SentimentIntensityAnalyzer()
DEMO = [
    "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
    "VADER is not smart, handsome, nor funny.",
    "The book was only kind of good.",
    "Today only kinda sux! But I'll get by, lol",
    "Catch utf-8 emoji such as 💘 and 💋 and 😁",
    "Sentiment analysis has never been this good!",
    "With VADER, sentiment analysis is the shit!",
    "On the other hand, VADER is quite bad ass",
    "Without a doubt, an excellent idea.",
    "Roger Dodger is at least compelling as a variation on the theme.",
    "Roger Dodger is one of the least compelling variations on this theme.",
    "It was one of the worst movies I've seen, despite good reviews. Unbelievably bad acting!! VERY BAD movie!",
    "What?? Really??? NO WAY!!!!!",
    "no good no bad no love",
]


def refuse(name: str, _args: str) -> str:
    raise HostCallRefused(f"capability {name} is not allowed")


@pytest.fixture(scope="module")
def vader(backend: SandboxBackend) -> PreparedGuest:
    return backend.prepare(GuestSource(build_compiled("vader")), refuse, Limits())


def call(guest: PreparedGuest, body: object) -> object:
    return json.loads(guest.instantiate().handle(json.dumps(body)))


def rule_sentences(count: int) -> list[str]:
    """Sentences drawn from lexicon words and every word a rule looks at, some in capitals."""
    rng = random.Random(18)
    lexicon = sorted(ANALYZER.lexicon)[::37]
    rule_words = [w for k in SPECIAL_CASES for w in k.split()] + list(BOOSTER_DICT) + NEGATE[::3]
    rule_words += ["but", "least", "at", "very", "no", "or", "kind", "of", "never", "so", "this", "without", "doubt"]
    vocabulary = lexicon + rule_words + ["💘", "😁", "😠", "!", "?", "!!", "???", ":)", ":-("]

    def sentence() -> str:
        words = [rng.choice(vocabulary) for _ in range(rng.randint(1, 14))]
        words = [w.upper() if rng.random() < 0.15 else w for w in words]
        return " ".join(words) + rng.choice(["", ".", "!", "!!!", "?", "??", " :)", "...", "!?"])

    return [sentence() for _ in range(count)]


def test_scores_equal_vadersentiment_on_the_reference_sentences(vader: PreparedGuest) -> None:
    for sentence in SENTENCES + DEMO:
        assert call(vader, {"text": sentence}) == {"scores": ANALYZER.polarity_scores(sentence)}, sentence


def test_scores_equal_vadersentiment_on_sentences_that_hit_every_rule(vader: PreparedGuest) -> None:
    sentences = rule_sentences(640)
    for start in range(0, len(sentences), 64):
        batch = sentences[start : start + 64]
        assert call(vader, {"texts": batch}) == {"results": [ANALYZER.polarity_scores(s) for s in batch]}


def test_speaks_open_inference_protocol(vader: PreparedGuest) -> None:
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": SENTENCES[:2]}]}
    outputs = {o["name"]: o for o in call(vader, request)["outputs"]}  # type: ignore[index]
    for name in ("neg", "neu", "pos", "compound"):
        expected = [ANALYZER.polarity_scores(s)[name] for s in SENTENCES[:2]]
        assert outputs[name] == {"name": name, "datatype": "FP32", "shape": [2], "data": expected}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": 42}, "text"),
        ({"text": "x" * 10001}, "text"),
        ({"texts": ["ok", 3]}, "texts[1]"),
        ({"texts": ["ok"] * 65}, "texts"),
        ({}, "text"),
        ([1, 2], "input"),
        ("{not json", "input"),
    ],
)
def test_bad_input_is_refused_naming_the_field(vader: PreparedGuest, body: object, field: str) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(GuestFailure) as caught:
        vader.instantiate().handle(raw)
    error = json.loads(caught.value.public)
    assert error["field"] == field and error["error"].startswith(f"{field}: "), error
