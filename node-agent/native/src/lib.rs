//! `tars_native`: the node-agent's native sandbox path, a Python extension over the `wasmtime` crate.
//!
//! Python keeps the control plane (which component, which limits, which capabilities are allowed)
//! and gets back a prepared guest whose `instantiate` and `handle` run with the GIL released, so
//! calls on worker threads run in parallel. Host calls come back into Python through `host_call`.

mod engine;

use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use wasmtime::component::Component;
use wasmtime::Store;

use engine::{Handle, Outcome, PoolSize, Prepared, State, StderrPipe};

static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();

fn err(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// The process's one engine: pooling slots are address space reserved once, shared by every guest.
#[pyfunction]
#[pyo3(signature = (pool_instances = 1100))]
fn init_engine(pool_instances: u32) -> PyResult<bool> {
    if ENGINE.get().is_some() {
        return Ok(false);
    }
    let engine = engine::engine(PoolSize { instances: pool_instances }).map_err(err)?;
    if ENGINE.set(engine).is_ok() {
        engine::start_ticker(ENGINE.get().unwrap());
        return Ok(true);
    }
    Ok(false)
}

fn shared_engine() -> PyResult<&'static wasmtime::Engine> {
    if ENGINE.get().is_none() {
        init_engine(1100)?;
    }
    Ok(ENGINE.get().unwrap())
}

/// A compiled component.
#[pyclass(frozen)]
struct NativeComponent(Component);

#[pymethods]
impl NativeComponent {
    /// Compiles WebAssembly component bytes (seconds for a large guest; the GIL is released).
    #[staticmethod]
    fn compile(py: Python<'_>, wasm: &[u8]) -> PyResult<Self> {
        let engine = shared_engine()?;
        let wasm = wasm.to_vec();
        py.detach(|| Component::new(engine, &wasm)).map(Self).map_err(err)
    }

    /// Loads code made by `serialize` with the same engine settings; fails on anything else.
    #[staticmethod]
    fn deserialize_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let engine = shared_engine()?;
        // SAFETY: only this agent and the image build write the compiled cache (see the caller).
        py.detach(|| unsafe { Component::deserialize_file(engine, &path) }).map(Self).map_err(err)
    }

    fn serialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.0.serialize().map_err(err)?;
        Ok(PyBytes::new(py, &bytes))
    }
}

/// A component bound to one model's host calls and memory limit, ready to start instances.
#[pyclass(frozen)]
struct NativeGuest {
    prepared: Arc<Prepared>,
    memory_bytes: usize,
    instantiate_ticks: u64,
}

#[pymethods]
impl NativeGuest {
    /// `host_call(name, args_json)` returns `(ok, text)`: the guest sees `ok(text)` or `err(text)`.
    #[new]
    fn new(component: &NativeComponent, host_call: Py<PyAny>, memory_bytes: usize, instantiate_ms: u64) -> PyResult<Self> {
        let engine = shared_engine()?;
        let host_call = Arc::new(host_call);
        let linker = engine::linker(engine, move |name, args| {
            Python::attach(|py| {
                host_call
                    .call1(py, (name, args))
                    .and_then(|answer| answer.extract::<(bool, String)>(py).map_err(PyErr::from))
                    .map_err(|e| {
                        e.print(py);
                        "host capability failed".to_string()
                    })
                    .and_then(|(ok, text)| if ok { Ok(text) } else { Err(text) })
            })
        })
        .map_err(err)?;
        let prepared = engine::prepare(&linker, &component.0).map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
        Ok(Self { prepared: Arc::new(prepared), memory_bytes, instantiate_ticks: engine::epoch_ticks(instantiate_ms) })
    }

    /// A fresh sandbox (the GIL is released while it starts).
    fn instantiate(&self, py: Python<'_>) -> PyResult<NativeInstance> {
        let stderr = StderrPipe::default();
        let started = py.detach(|| {
            engine::instantiate(&self.prepared, self.memory_bytes, self.instantiate_ticks, stderr.clone())
        });
        let (store, handle) = started.map_err(|e| err(format!("{e:?}")))?;
        Ok(NativeInstance { started: Mutex::new(Some((store, handle))), stderr })
    }
}

/// One started sandbox, good for a single call.
#[pyclass(frozen)]
struct NativeInstance {
    started: Mutex<Option<(Store<State>, Handle)>>,
    stderr: StderrPipe,
}

#[pymethods]
impl NativeInstance {
    /// Runs `handle` within `cpu_ms` of guest time. Returns `(kind, text)`, kind one of "ok",
    /// "rejected" (the guest's own error), "timeout" or "trap" (text: the trap, not for clients).
    fn handle(&self, py: Python<'_>, input_json: String, cpu_ms: u64) -> PyResult<(&'static str, String)> {
        let (store, handle) = self
            .started
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("a sandbox instance serves one request only"))?;
        let outcome = py.detach(|| engine::call(store, handle, input_json, engine::epoch_ticks(cpu_ms)));
        Ok(match outcome {
            Outcome::Ok(output) => ("ok", output),
            Outcome::Rejected(text) => ("rejected", text),
            Outcome::Timeout => ("timeout", String::new()),
            Outcome::Trap(message) => ("trap", message),
        })
    }

    /// `(head, out_of_memory)`: the start of the guest's stderr and whether it ran out of memory.
    fn stderr<'py>(&self, py: Python<'py>) -> (Bound<'py, PyBytes>, bool) {
        let state = self.stderr.0.lock().unwrap();
        (PyBytes::new(py, &state.head), state.out_of_memory)
    }

    /// Frees the sandbox's slot now.
    fn close(&self) {
        self.started.lock().unwrap().take();
    }
}

#[pymodule]
fn tars_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init_engine, m)?)?;
    m.add_class::<NativeComponent>()?;
    m.add_class::<NativeGuest>()?;
    m.add_class::<NativeInstance>()?;
    m.add("WASMTIME_VERSION", "48.0.8")?;
    Ok(())
}
