//! The builtin embedding model (all-MiniLM-L6-v2) as a compiled TARS guest, with the same requests,
//! answers and errors as the componentize-py guest (guests/tars_guests/apps/embedding), which
//! Hyperlight still runs from source. The host's nn.embed does the model; this guest checks the
//! texts and passes the host's reply on unparsed (nn.embed answers in the caller's layout). What it
//! saves is the guest's own cost: a componentize-py instance took about 5 ms of CPU per request here
//! to start CPython, parse the request and call out, against an embedding's 6-7 ms.
//!
//! invoke: {"text": "..."} -> {"embedding": [384 floats], "dimensions": 384, "model": ...};
//!         {"texts": [...]} -> {"embeddings": [[...], ...], "dimensions": 384, "model": ...}
//! infer:  input "text" (BYTES, [n]) -> output "embedding" (FP32, [n, 384])

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({ world: "function", path: "../../wit" });

    struct Embedding;

    impl Guest for Embedding {
        fn handle(input_json: String) -> Result<String, String> {
            let args = super::embed_arguments(&input_json)?;
            tars::guest::host::call("nn.embed", &args).map_err(|refused| super::refused(&refused))
        }
    }

    export!(Embedding);
}

use serde_json::json;
use tars_guestlib::{read_request, text_list};

const MAX_TEXTS: usize = 32;

/// The nn.embed arguments for a request: its texts, and the layout the answer must have.
pub fn embed_arguments(input_json: &str) -> Result<String, String> {
    let (fields, is_oip) = read_request(input_json)?;
    let (texts, many) = text_list(&fields, MAX_TEXTS)?;
    let layout = if is_oip { "oip" } else if many { "batch" } else { "single" };
    Ok(json!({ "texts": texts, "layout": layout }).to_string())
}

/// The guest error for a refused or failed nn.embed call, as the Python guest words it.
pub fn refused(reason: &str) -> String {
    json!({ "error": format!("nn.embed: {reason}") }).to_string()
}
