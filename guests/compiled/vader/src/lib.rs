//! The builtin sentiment model as a compiled TARS guest: VADER ported to Rust (src/vader.rs), with
//! the same requests, answers and errors as the componentize-py guest (guests/tars_guests/apps/
//! sentiment), which stays as an example of a Python function.
//!
//! invoke: {"text": "..."} -> {"scores": {"neg", "neu", "pos", "compound"}};
//!         {"texts": [...]} -> {"results": [scores, ...]}
//! infer:  input "text" (BYTES, [n]) -> outputs "neg", "neu", "pos", "compound" (FP32, [n])

pub mod vader;

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({ world: "function", path: "../../wit" });

    struct Sentiment;

    impl Guest for Sentiment {
        fn handle(input_json: String) -> Result<String, String> {
            super::handle(&input_json)
        }
    }

    export!(Sentiment);
}

use serde_json::{json, Value};
use tars_guestlib::{read_request, text_list};
use vader::Scores;

const MAX_BATCH: usize = 64;

fn scores_json(s: &Scores) -> Value {
    json!({ "neg": s.neg, "neu": s.neu, "pos": s.pos, "compound": s.compound })
}

pub fn handle(input_json: &str) -> Result<String, String> {
    let (fields, is_oip) = read_request(input_json)?;
    let (texts, many) = text_list(&fields, MAX_BATCH)?;
    let scores: Vec<Scores> = texts.iter().map(|t| vader::polarity_scores(t)).collect();
    let answer = if is_oip {
        let output = |name: &str, pick: fn(&Scores) -> f64| {
            json!({ "name": name, "datatype": "FP32", "shape": [scores.len()], "data": scores.iter().map(pick).collect::<Vec<f64>>() })
        };
        json!({ "outputs": [
            output("neg", |s| s.neg),
            output("neu", |s| s.neu),
            output("pos", |s| s.pos),
            output("compound", |s| s.compound),
        ]})
    } else if many {
        json!({ "results": scores.iter().map(scores_json).collect::<Vec<Value>>() })
    } else {
        json!({ "scores": scores_json(&scores[0]) })
    };
    Ok(answer.to_string())
}
