//! A TARS guest function written in Rust, built into a WebAssembly component of the `tars:guest`
//! `function` world (guests/wit/tars.wit) with `cargo build --target wasm32-wasip2`.
//!
//! Input: `{"text": "..."}`. Output: word, line and character counts, the most frequent words and,
//! when the function's TarsModel allows `clock.now`, the host's time (asked through `host.call`).

wit_bindgen::generate!({
    world: "function",
    path: "../../wit",
});

use serde_json::{json, Value};
use std::collections::HashMap;

use crate::tars::guest::host;

const TOP_WORDS: usize = 5;

struct TextStats;

/// The `count` most frequent lower-cased words, ties broken alphabetically so output is stable.
fn top_words(text: &str, count: usize) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(count);
    ranked
}

impl Guest for TextStats {
    fn handle(input_json: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input_json).map_err(|e| format!("input is not JSON: {e}"))?;
        let text = input
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| "input needs a \"text\" string".to_string())?;
        // A capability the TarsModel does not list comes back as an error: report it, do not fail.
        let clock = match host::call("clock.now", "{}") {
            Ok(reply) => serde_json::from_str::<Value>(&reply).unwrap_or(Value::Null),
            Err(refused) => json!({ "refused": refused }),
        };
        let top: Vec<Value> = top_words(text, TOP_WORDS)
            .into_iter()
            .map(|(word, n)| json!({ "word": word, "count": n }))
            .collect();
        let output = json!({
            "language": "rust",
            "words": text.split_whitespace().count(),
            "lines": text.lines().count(),
            "chars": text.chars().count(),
            "top": top,
            "clock": clock,
        });
        Ok(output.to_string())
    }
}

export!(TextStats);
