//! `tars_native`: the node-agent's native sandbox path, a Python extension over the `wasmtime` crate.
//!
//! Python keeps the control plane (which component, which limits, which capabilities are allowed)
//! and gets back a prepared guest whose `instantiate` and `handle` run with the GIL released, so
//! calls on worker threads run in parallel. Host calls come back into Python through `host_call`.

mod admission;
mod engine;
mod figures;
mod front;
mod infer;
mod tls;

use std::collections::HashSet;
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
    let engine = engine::engine(PoolSize {
        instances: pool_instances,
    })
    .map_err(err)?;
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
        py.detach(|| unsafe { Component::deserialize_file(engine, &path) })
            .map(Self)
            .map_err(err)
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
    fn new(
        component: &NativeComponent,
        host_call: Py<PyAny>,
        memory_bytes: usize,
        instantiate_ms: u64,
    ) -> PyResult<Self> {
        let engine = shared_engine()?;
        let host_call = Arc::new(host_call);
        let linker = engine::linker(engine, move |name, args| {
            Python::attach(|py| {
                host_call
                    .call1(py, (name, args))
                    .and_then(|answer| answer.extract::<(bool, String)>(py))
                    .map_err(|e| {
                        e.print(py);
                        "host capability failed".to_string()
                    })
                    .and_then(|(ok, text)| if ok { Ok(text) } else { Err(text) })
            })
        })
        .map_err(err)?;
        let prepared = engine::prepare(&linker, &component.0).map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
        Ok(Self {
            prepared: Arc::new(prepared),
            memory_bytes,
            instantiate_ticks: engine::epoch_ticks(instantiate_ms),
        })
    }

    /// A fresh sandbox (the GIL is released while it starts).
    fn instantiate(&self, py: Python<'_>) -> PyResult<NativeInstance> {
        let stderr = StderrPipe::default();
        let started = py.detach(|| {
            engine::instantiate(
                &self.prepared,
                self.memory_bytes,
                self.instantiate_ticks,
                stderr.clone(),
                None,
            )
        });
        let (store, handle) = started.map_err(|e| err(format!("{e:?}")))?;
        Ok(NativeInstance {
            started: Mutex::new(Some((store, handle))),
            stderr,
        })
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

type Answered = (String, &'static str, u16, u64, f64);
type Refused = (String, String, bool, u64, f64);
type AnswerHistogram = (String, &'static str, u16, Vec<u64>, f64);

/// The agent's native HTTP front (see front.rs): owns the public port, serves the infer route of the
/// models and callers Python taught it, forwards everything else to aiohttp on `upstream_port`.
#[pyclass(frozen)]
struct NativeFront {
    front: Arc<front::Front>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    #[pyo3(get)]
    port: u16,
}

#[pymethods]
impl NativeFront {
    /// `judge(route, label, model_name, version, id, kind, text, stderr, out_of_memory)` returns
    /// `(status, json_body, retry_after)` for every outcome the front does not answer itself; with
    /// `tls_cert` and `tls_key` (PEM files) it speaks HTTPS.
    #[new]
    #[pyo3(signature = (host, port, upstream_port, judge, workers, max_queue, max_body, bounds, threads = 2, reuse_port = false, tls_cert = None, tls_key = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        upstream_port: u16,
        judge: Py<PyAny>,
        workers: usize,
        max_queue: usize,
        max_body: usize,
        bounds: Vec<f64>,
        threads: usize,
        reuse_port: bool,
        tls_cert: Option<std::path::PathBuf>,
        tls_key: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let tls = match (&tls_cert, &tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key).map_err(PyValueError::new_err)?),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("TLS needs both a certificate and a key")),
        };
        let judge: front::Judge = Box::new(move |v: front::Verdict| {
            Python::attach(|py| {
                let stderr = PyBytes::new(py, &v.stderr);
                let route = v.route.path();
                let args = (
                    route,
                    v.label,
                    v.model_name,
                    v.version,
                    v.id,
                    v.kind,
                    v.text,
                    stderr,
                    v.out_of_memory,
                );
                judge
                    .call1(py, args)
                    .and_then(|a| a.extract::<(u16, String, u32)>(py))
                    .unwrap_or_else(|e| {
                        e.print(py);
                        (500, r#"{"error": "internal error"}"#.to_string(), 0)
                    })
            })
        });
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let front = Arc::new(front::Front::new(
            upstream,
            threads.max(1),
            workers,
            max_queue,
            max_body,
            bounds,
            judge,
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tars-front")
            .enable_all()
            .build()
            .map_err(err)?;
        let listener = py
            .detach(|| runtime.block_on(bind(&host, port, reuse_port)))
            .map_err(err)?;
        let port = listener.local_addr().map_err(err)?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        runtime.spawn(front::serve_forever(front.clone(), listener, tls, stopped));
        Ok(Self {
            front,
            runtime: Mutex::new(Some(runtime)),
            stop: Mutex::new(Some(stop)),
            port,
        })
    }

    /// Serve `name` (as clients spell it) with this guest and these limits; a route already there for
    /// the same model and version is kept with its grants.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        name: String,
        label: String,
        model_name: String,
        version: String,
        guest: &NativeGuest,
        cpu_ms: u64,
        wall_ms: u64,
        output_bytes: usize,
        cap: usize,
        fair_share: bool,
        capabilities: HashSet<String>,
    ) {
        let mut routes = self.front.routes.write().unwrap();
        if routes
            .get(&name)
            .is_some_and(|r| r.label == label && r.version == version)
        {
            return;
        }
        let route = front::Route::new(
            label,
            model_name,
            version,
            guest.prepared.clone(),
            guest.memory_bytes,
            guest.instantiate_ticks,
            cpu_ms,
            wall_ms,
            output_bytes,
            admission::Cap {
                base: cap,
                share: fair_share,
            },
            capabilities,
            self.front.figures.clone(),
        );
        routes.insert(name, Arc::new(route));
    }

    /// Admits to `name` the callers whose credential headers digest to `credential` (None: anyone)
    /// for `seconds`. False when there is no such route (cleared meanwhile).
    fn grant(&self, name: &str, credential: Option<[u8; 32]>, seconds: f64) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.0));
        match self.front.routes.read().unwrap().get(name) {
            Some(route) => {
                route.grant(credential, until);
                true
            }
            None => false,
        }
    }

    /// `[(model, running, waiting)]`: the guest calls the front holds now.
    fn admitted(&self) -> Vec<(String, usize, usize)> {
        self.front.admission.snapshot()
    }

    /// Forgets every route and grant: requests go to Python until it teaches the front again.
    fn clear(&self) {
        self.front.routes.write().unwrap().clear();
    }

    /// `([(label, route, status, count, seconds)], [(label, capability, known, count, seconds)])`:
    /// answers and refused host calls since the last call.
    fn drain(&self) -> (Vec<Answered>, Vec<Refused>) {
        let (answers, refused) = self.front.figures.drain();
        let answers = answers
            .into_iter()
            .map(|((label, kind, status), t)| (label, kind.path(), status, t.count, t.seconds))
            .collect();
        let refused = refused
            .into_iter()
            .map(|((label, name), r)| (label, name, r.known, r.count, r.seconds))
            .collect();
        (answers, refused)
    }

    /// `([(label, route, status, buckets, sum)], [(capability, buckets, sum)])`: the answers' and the
    /// refused host calls' durations since start, bucket by bucket (not cumulative, +Inf last).
    #[allow(clippy::type_complexity)]
    fn histograms(&self) -> (Vec<AnswerHistogram>, Vec<(String, Vec<u64>, f64)>) {
        let (answers, host) = self.front.figures.histograms();
        let answers = answers
            .into_iter()
            .map(|((label, kind, status), h)| (label, kind.path(), status, h.buckets, h.sum))
            .collect();
        let host = host.into_iter().map(|(name, h)| (name, h.buckets, h.sum)).collect();
        (answers, host)
    }

    /// Stops accepting; connections in progress end with the runtime.
    fn close(&self, py: Python<'_>) {
        self.clear();
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.lock().unwrap().take() {
            py.detach(|| runtime.shutdown_timeout(std::time::Duration::from_secs(1)));
        }
    }
}

async fn bind(host: &str, port: u16, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let address = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address")))?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(address)?;
    socket.listen(1024)
}

#[pymodule]
fn tars_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init_engine, m)?)?;
    m.add_class::<NativeComponent>()?;
    m.add_class::<NativeGuest>()?;
    m.add_class::<NativeInstance>()?;
    m.add_class::<NativeFront>()?;
    m.add("WASMTIME_VERSION", "48.0.8")?;
    Ok(())
}
