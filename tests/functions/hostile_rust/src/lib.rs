//! A hostile user function: each `op` tries one way out of the sandbox, or one way to exhaust it.
//! tests/functions checks that the agent stops every one, and with the right reason.

wit_bindgen::generate!({
    world: "function",
    path: "../../../guests/wit",
});

use serde_json::{json, Value};
use std::io::{Read, Write};

use crate::tars::guest::host;

// Linear memory that outlives one call if the host ever reused an instance.
static mut LEFT_BEHIND: [u8; 64] = [0; 64];

struct Hostile;

fn hex_decode(text: &str) -> Result<Vec<u8>, String> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or(""), 16).map_err(|e| e.to_string()))
        .collect()
}

/// Occurrences of `needle` anywhere in this instance's linear memory, except the needle itself.
fn scan_memory(needle: &[u8]) -> usize {
    let size = core::arch::wasm32::memory_size(0) * 65536;
    let own = needle.as_ptr() as usize;
    let mut found = 0;
    // Address 0 is never a Rust object; start at 1 so no null pointer is formed.
    for address in 1..size.saturating_sub(needle.len()) {
        if address == own {
            continue;
        }
        let matches = (0..needle.len())
            .all(|i| unsafe { core::ptr::read_volatile((address + i) as *const u8) } == needle[i]);
        if matches {
            found += 1;
        }
    }
    found
}

impl Guest for Hostile {
    fn handle(input_json: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input_json).map_err(|e| e.to_string())?;
        let op = input["op"].as_str().unwrap_or("");
        match op {
            "ok" => Ok(json!({"ok": true}).to_string()),
            "read_file" => {
                let path = input["path"].as_str().unwrap_or("/etc/passwd");
                let mut text = String::new();
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(|e| format!("read {path}: {e}"))?;
                Ok(json!({"read": text}).to_string())
            }
            "socket" => {
                let address = input["address"].as_str().unwrap_or("127.0.0.1:80");
                let mut stream = std::net::TcpStream::connect(address).map_err(|e| format!("connect {address}: {e}"))?;
                stream.write_all(b"stolen").map_err(|e| e.to_string())?;
                Ok(json!({"connected": true}).to_string())
            }
            "memory_bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "alloc" => {
                let mib = input["mib"].as_u64().unwrap_or(1) as usize;
                let block = vec![7u8; mib << 20];
                Ok(json!({"allocated_mib": mib, "checksum": core::hint::black_box(&block)[mib << 19]}).to_string())
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = core::hint::black_box(x.wrapping_add(1));
                }
            }
            "flood" => Ok(json!({"flood": "x".repeat(input["bytes"].as_u64().unwrap_or(1 << 24) as usize)}).to_string()),
            "capability" => {
                let name = input["name"].as_str().unwrap_or("knowledge.query");
                host::call(name, "{}").map(|reply| json!({"reply": reply}).to_string())
            }
            "remember" => {
                let secret = hex_decode(input["secret_hex"].as_str().unwrap_or(""))?;
                let kept: Vec<u8> = secret.clone();
                unsafe {
                    let n = secret.len().min(64);
                    (&mut *core::ptr::addr_of_mut!(LEFT_BEHIND))[..n].copy_from_slice(&secret[..n]);
                }
                // Leak a heap copy too, as a careless function would.
                std::mem::forget(kept);
                Ok(json!({"remembered": secret.len()}).to_string())
            }
            "scan" => {
                let needle = hex_decode(input["secret_hex"].as_str().unwrap_or(""))?;
                let static_copy = unsafe { (&*core::ptr::addr_of!(LEFT_BEHIND))[..needle.len().min(64)].to_vec() };
                Ok(json!({
                    "found": scan_memory(&needle),
                    "static_matches": static_copy == needle,
                })
                .to_string())
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

export!(Hostile);
