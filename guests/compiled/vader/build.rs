//! Turns vaderSentiment's two lexicons into static tables sorted for binary search, so a fresh
//! instance parses nothing. The lexicons are read from the installed vaderSentiment package (the
//! Python guest uses the same files): `$VADER_DIR`, else the package `python3` imports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn vader_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("VADER_DIR") {
        return PathBuf::from(dir);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args(["-c", "import os, vaderSentiment; print(os.path.dirname(vaderSentiment.__file__))"])
        .output()
        .expect("running python3 to find vaderSentiment (or set VADER_DIR)");
    assert!(out.status.success(), "vaderSentiment is not installed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `(key, value)` from each line's first two tab-separated fields; a later line wins, as in a dict.
fn read_pairs(path: &PathBuf) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pairs = BTreeMap::new();
    for line in text.trim_end_matches('\n').split('\n') {
        let line = line.trim();
        let mut fields = line.split('\t');
        if let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            pairs.insert(key.to_string(), value.to_string());
        }
    }
    pairs
}

fn main() {
    let dir = vader_dir();
    println!("cargo:rerun-if-env-changed=VADER_DIR");
    let lexicon = read_pairs(&dir.join("vader_lexicon.txt"));
    let emojis = read_pairs(&dir.join("emoji_utf8_lexicon.txt"));
    let mut code = String::from("pub static LEXICON: &[(&str, f64)] = &[\n");
    for (word, measure) in &lexicon {
        let value: f64 = measure.parse().unwrap();
        writeln!(code, "    ({word:?}, {value:?}),").unwrap();
    }
    code.push_str("];\npub static EMOJIS: &[(char, &str)] = &[\n");
    // Only one-character emojis can match: the analyzer looks text up one character at a time.
    let mut single: Vec<(char, &String)> = emojis
        .iter()
        .filter_map(|(k, v)| {
            let mut chars = k.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some((c, v)),
                _ => None,
            }
        })
        .collect();
    single.sort();
    for (emoji, description) in single {
        writeln!(code, "    ({emoji:?}, {description:?}),").unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("lexicon.rs");
    std::fs::write(out, code).unwrap();
}
