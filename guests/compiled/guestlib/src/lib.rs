//! What the compiled TARS guests share: requests read and checked with the same fields, limits and
//! error texts as the componentize-py guests' tars_guestlib (guests/tars_guests/apps/_lib), so a
//! builtin served by a compiled guest answers exactly as its Python app does.
//!
//! Two request shapes reach a guest: an invoke body as is (a JSON object) and Open Inference Protocol
//! requests (`{"inputs": [{"name", "datatype", "shape", "data"}], "parameters": {...}}`);
//! [`read_request`] turns both into one map of fields.

use serde_json::{json, Map, Value};

pub const MAX_TEXT_CHARS: usize = 10000;

/// The guest error for `field`, shaped as tars_guestlib.fail makes it.
pub fn fail(field: &str, problem: String) -> String {
    json!({ "error": format!("{field}: {problem}"), "field": field }).to_string()
}

/// Python's name for a JSON value's type, as the Python guests report it.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// (fields, is_oip): the request's fields, and whether it came as an inference request.
pub fn read_request(input_json: &str) -> Result<(Map<String, Value>, bool), String> {
    let request: Value =
        serde_json::from_str(input_json).map_err(|e| fail("input", format!("is not valid JSON ({e})")))?;
    let Value::Object(mut request) = request else {
        return Err(fail("input", format!("must be a JSON object, not {}", type_name(&request))));
    };
    let Some(Value::Array(inputs)) = request.get("inputs") else { return Ok((request, false)) };
    let inputs = inputs.clone();
    let mut fields = match request.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) if p.is_empty() => Map::new(),
        Some(Value::Object(p)) => p,
        Some(v) if is_falsy(&v) => Map::new(),
        Some(_) => return Err(fail("parameters", "must be an object".into())),
    };
    for (index, tensor) in inputs.iter().enumerate() {
        let name = tensor.get("name").and_then(Value::as_str);
        let (Value::Object(t), Some(name)) = (tensor, name) else {
            return Err(fail(&format!("inputs[{index}]"), "must be a tensor object with a name".into()));
        };
        let mut data = t.get("data").cloned().unwrap_or(Value::Null);
        // A one-element tensor stands for a scalar field; longer ones for a list.
        let scalar_shape = matches!(t.get("shape"), Some(s) if *s == json!([1]) || *s == json!([1, 1]));
        if let Value::Array(items) = &data {
            if items.len() == 1 && scalar_shape {
                data = items[0].clone();
            }
        }
        fields.insert(name.to_string(), data);
    }
    Ok((fields, true))
}

/// Python truthiness of a `parameters` value that is not an object (`or {}` keeps only truthy ones).
fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

pub fn check_text(value: &Value, name: &str) -> Result<String, String> {
    let Value::String(text) = value else {
        return Err(fail(name, format!("must be a string, not {}", type_name(value))));
    };
    if text.trim().is_empty() {
        return Err(fail(name, "must not be empty".into()));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(fail(name, format!("is {chars} characters long; the limit is {MAX_TEXT_CHARS}")));
    }
    Ok(text.clone())
}

/// (texts, was_list) from "text" (one string) or "texts" (a list of at most `max_items` strings).
pub fn text_list(fields: &Map<String, Value>, max_items: usize) -> Result<(Vec<String>, bool), String> {
    let plural = match fields.get("texts") {
        Some(v) if !v.is_null() => Some(v.clone()),
        _ => match fields.get("text") {
            Some(Value::Array(items)) => Some(Value::Array(items.clone())),
            _ => None,
        },
    };
    if let Some(values) = plural {
        let values = match values {
            Value::String(s) => vec![Value::String(s)],
            Value::Array(items) => items,
            other => return Err(fail("texts", format!("must be a list of strings, not {}", type_name(&other)))),
        };
        if values.is_empty() {
            return Err(fail("texts", "must not be empty".into()));
        }
        if values.len() > max_items {
            return Err(fail("texts", format!("has {} items; the limit is {max_items}", values.len())));
        }
        let texts = values.iter().enumerate().map(|(i, v)| check_text(v, &format!("texts[{i}]")));
        return Ok((texts.collect::<Result<_, _>>()?, true));
    }
    match fields.get("text") {
        None | Some(Value::Null) => Err(fail("text", "is required".into())),
        Some(value) => Ok((vec![check_text(value, "text")?], false)),
    }
}
