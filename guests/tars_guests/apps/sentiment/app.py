"""Sentiment guest: VADER, wholly inside the sandbox.

The analyzer (and its 7,500-word lexicon, read from the vendored vaderSentiment package) is built at
module top level, i.e. at build time, so it lives in the component's memory snapshot and no request
pays for parsing it.

invoke: {"text": "..."} -> {"scores": {"neg", "neu", "pos", "compound"}};
        {"texts": [...]} -> {"results": [scores, ...]}
infer:  input "text" (BYTES, [n]) -> outputs "neg", "neu", "pos", "compound" (FP32, [n])
"""

import json

import tars_guestlib as lib
import wit_world
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

ANALYZER = SentimentIntensityAnalyzer()
SCORE_NAMES = ("neg", "neu", "pos", "compound")


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        texts, many = lib.text_list(fields, "text", "texts")
        scores = [ANALYZER.polarity_scores(text) for text in texts]
        if is_oip:
            return json.dumps({"outputs": [lib.oip_fp32_output(n, [s[n] for s in scores]) for n in SCORE_NAMES]})
        return json.dumps({"results": scores} if many else {"scores": scores[0]})
