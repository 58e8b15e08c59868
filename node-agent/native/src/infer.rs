//! The Open Inference Protocol shapes the native front serves, checked strictly.
//!
//! This is a strict subset of what the Python route accepts (tars_agent.protocol): a request this
//! module accepts is one pydantic accepts unchanged and `tensor_problem` passes, and the guest sees
//! the same JSON values. Anything else (lax forms pydantic would coerce, every kind of invalid input)
//! returns `None` and goes to the Python route, which gives the answer or the exact error. The same
//! holds for the guest's output: a strict answer is built here, anything else is judged in Python.

use serde_json::{Map, Value};

// tars_agent.protocol.MAX_JSON_DEPTH and CPython's limit on integer digits.
const MAX_DEPTH: usize = 64;
const MAX_INT_DIGITS: usize = 4300;
const MAX_NAME_CHARS: usize = 256;
const DATATYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
];

/// A request the front may serve: what the guest gets, and the id the answer echoes.
pub struct Request {
    pub id: Option<String>,
    pub guest_input: String,
}

pub fn parse_request(body: &[u8]) -> Option<Request> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if !plain_json(&value) {
        return None;
    }
    let Value::Object(fields) = value else { return None };
    if fields
        .keys()
        .any(|k| !matches!(k.as_str(), "id" | "parameters" | "inputs" | "outputs"))
    {
        return None;
    }
    let id = match fields.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.chars().count() <= MAX_NAME_CHARS => Some(id.clone()),
        _ => return None,
    };
    let mut guest = Map::new();
    if let Some(parameters) = optional_object(fields.get("parameters"))? {
        guest.insert("parameters".into(), parameters);
    }
    let Some(Value::Array(inputs)) = fields.get("inputs") else {
        return None;
    };
    if inputs.is_empty() {
        return None;
    }
    guest.insert(
        "inputs".into(),
        Value::Array(inputs.iter().map(input_tensor).collect::<Option<_>>()?),
    );
    match fields.get("outputs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(outputs)) => {
            guest.insert(
                "outputs".into(),
                Value::Array(outputs.iter().map(requested_output).collect::<Option<_>>()?),
            );
        }
        Some(_) => return None,
    }
    Some(Request {
        id,
        guest_input: Value::Object(guest).to_string(),
    })
}

/// A function invocation's body, for the guest as it is (the Python route hands the guest the JSON
/// it parsed, written again): `None` for anything Python's reading would refuse.
pub fn parse_invoke(body: &[u8]) -> Option<Request> {
    let value: Value = serde_json::from_slice(body).ok()?;
    plain_json(&value).then(|| Request {
        id: None,
        guest_input: value.to_string(),
    })
}

/// True when a guest's invoke output is JSON (anything else is judged in Python).
pub fn is_json(output: &str) -> bool {
    serde_json::from_str::<Value>(output).is_ok()
}

/// `Some(None)` for absent or null, `Some(Some(object))` for an object, `None` for anything else.
fn optional_object(value: Option<&Value>) -> Option<Option<Value>> {
    match value {
        None | Some(Value::Null) => Some(None),
        Some(object @ Value::Object(_)) => Some(Some(object.clone())),
        Some(_) => None,
    }
}

fn name(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(name)) if !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS => Some(name),
        _ => None,
    }
}

fn input_tensor(value: &Value) -> Option<Value> {
    let Value::Object(fields) = value else { return None };
    if fields
        .keys()
        .any(|k| !matches!(k.as_str(), "name" | "shape" | "datatype" | "parameters" | "data"))
    {
        return None;
    }
    let tensor_name = name(fields.get("name"))?;
    let Some(Value::String(datatype)) = fields.get("datatype") else {
        return None;
    };
    if !DATATYPES.contains(&datatype.as_str()) {
        return None;
    }
    let Some(Value::Array(shape)) = fields.get("shape") else {
        return None;
    };
    let mut expected: u64 = 1;
    for dim in shape {
        expected = expected.checked_mul(dim.as_u64()?)?;
    }
    let data @ Value::Array(_) = fields.get("data")? else {
        return None;
    };
    let elements = flat(data);
    if elements.len() as u64 != expected || !elements.iter().all(|e| fits(datatype, e)) {
        return None;
    }
    tensor(tensor_name, shape, datatype, fields.get("parameters"), data)
}

/// A tensor object in the protocol's key order (name, shape, datatype, parameters, data), as the
/// Python route writes it; None when `parameters` is present but not an object.
fn tensor(name: &str, shape: &[Value], datatype: &str, parameters: Option<&Value>, data: &Value) -> Option<Value> {
    let mut tensor = Map::new();
    tensor.insert("name".into(), Value::String(name.into()));
    tensor.insert("shape".into(), Value::Array(shape.to_vec()));
    tensor.insert("datatype".into(), Value::String(datatype.into()));
    if let Some(parameters) = optional_object(parameters)? {
        tensor.insert("parameters".into(), parameters);
    }
    tensor.insert("data".into(), data.clone());
    Some(Value::Object(tensor))
}

fn requested_output(value: &Value) -> Option<Value> {
    let Value::Object(fields) = value else { return None };
    if fields.keys().any(|k| !matches!(k.as_str(), "name" | "parameters")) {
        return None;
    }
    let mut output = Map::new();
    output.insert("name".into(), Value::String(name(fields.get("name"))?.into()));
    if let Some(parameters) = optional_object(fields.get("parameters"))? {
        output.insert("parameters".into(), parameters);
    }
    Some(Value::Object(output))
}

/// Tensor elements row-major, from flat or nested lists (depth is bounded by `plain_json`).
fn flat(data: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack = vec![data];
    while let Some(item) = stack.pop() {
        match item {
            Value::Array(items) => stack.extend(items.iter().rev()),
            element => out.push(element),
        }
    }
    out
}

fn fits(datatype: &str, element: &Value) -> bool {
    let Value::Number(number) = element else {
        return match datatype {
            "BOOL" => element.is_boolean(),
            "BYTES" => element.is_string(),
            _ => false,
        };
    };
    let (low, high): (i128, i128) = match datatype {
        "INT8" => (i8::MIN.into(), i8::MAX.into()),
        "INT16" => (i16::MIN.into(), i16::MAX.into()),
        "INT32" => (i32::MIN.into(), i32::MAX.into()),
        "INT64" => (i64::MIN.into(), i64::MAX.into()),
        "UINT8" => (0, u8::MAX.into()),
        "UINT16" => (0, u16::MAX.into()),
        "UINT32" => (0, u32::MAX.into()),
        "UINT64" => (0, u64::MAX.into()),
        "FP16" | "FP32" | "FP64" => return true, // finite: checked by plain_json
        _ => return false,
    };
    let whole = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from));
    whole.is_some_and(|n| low <= n && n <= high)
}

/// True when `value` is what Python's parser reads as it is: nesting within MAX_DEPTH, finite
/// numbers, integers within CPython's digit limit.
fn plain_json(value: &Value) -> bool {
    let mut stack = vec![(value, 1usize)];
    while let Some((item, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match item {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            Value::Number(number) => {
                let text = number.to_string();
                let integer = !text.contains(['.', 'e', 'E']);
                if (integer && text.len() > MAX_INT_DIGITS)
                    || (!integer && !number.as_f64().is_some_and(f64::is_finite))
                {
                    return false;
                }
                continue;
            }
            _ => continue,
        };
        for child in children {
            if matches!(child, Value::Array(_) | Value::Object(_)) {
                if depth + 1 > MAX_DEPTH {
                    return false;
                }
                stack.push((child, depth + 1));
            } else {
                stack.push((child, depth));
            }
        }
    }
    true
}

/// The InferResponse for a guest's output, or `None` when the output is not strictly of the
/// GuestInferResult shape (Python then judges it).
pub fn answer(output: &str, model_name: &str, model_version: &str, id: Option<&str>) -> Option<String> {
    let Value::Object(fields) = serde_json::from_str::<Value>(output).ok()? else {
        return None;
    };
    let Some(Value::Array(outputs)) = fields.get("outputs") else {
        return None;
    };
    let mut response = Map::new();
    response.insert("model_name".into(), Value::String(model_name.into()));
    response.insert("model_version".into(), Value::String(model_version.into()));
    if let Some(id) = id {
        response.insert("id".into(), Value::String(id.into()));
    }
    if let Some(parameters) = optional_object(fields.get("parameters"))? {
        response.insert("parameters".into(), parameters);
    }
    response.insert(
        "outputs".into(),
        Value::Array(outputs.iter().map(response_output).collect::<Option<_>>()?),
    );
    Some(Value::Object(response).to_string())
}

fn response_output(value: &Value) -> Option<Value> {
    let Value::Object(fields) = value else { return None };
    let Some(Value::String(tensor_name)) = fields.get("name") else {
        return None;
    };
    let Some(Value::Array(shape)) = fields.get("shape") else {
        return None;
    };
    if !shape.iter().all(|d| d.is_i64() || d.is_u64()) {
        return None;
    }
    let Some(Value::String(datatype)) = fields.get("datatype") else {
        return None;
    };
    if !DATATYPES.contains(&datatype.as_str()) {
        return None;
    }
    // Extra keys are ignored, as pydantic does; a null `data` would be dropped there: left to Python.
    let data = fields.get("data").filter(|d| !d.is_null())?;
    tensor(tensor_name, shape, datatype, fields.get("parameters"), data)
}
