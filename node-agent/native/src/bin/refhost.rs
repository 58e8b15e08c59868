//! The reference host for bench/sandbox.py: hyper + the same Wasmtime engine settings as the agent's
//! native path, a fresh instance per request, no Python. What the agent is measured against.
//!
//!   tars-refhost COMPONENT.wasm PORT [WORKERS]
//!
//! Every POST body is passed to the guest's `handle` as is; the answer is its output (200) or its
//! error (400 rejected, 500 trap). Host calls are refused, as for a model that allows none.

#[path = "../engine.rs"]
mod engine;

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime::{bail, Result};

const MEMORY_BYTES: usize = 256 << 20;

async fn serve(
    prepared: Arc<engine::Prepared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST, "unreadable body".into())),
    };
    let input = String::from_utf8_lossy(&body).into_owned();
    let started = engine::instantiate(
        &prepared,
        MEMORY_BYTES,
        engine::epoch_ticks(30_000),
        Default::default(),
        None,
    );
    let (status, text) = match started {
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
        Ok((store, handle)) => match engine::call(store, handle, input, engine::epoch_ticks(2_000)) {
            engine::Outcome::Ok(output) => (StatusCode::OK, output),
            engine::Outcome::Rejected(text) => (StatusCode::BAD_REQUEST, text),
            engine::Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout".into()),
            engine::Outcome::Trap(text) => (StatusCode::INTERNAL_SERVER_ERROR, text),
        },
    };
    Ok(answer(status, text))
}

fn answer(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, port, rest @ ..] = args.as_slice() else {
        bail!("usage: tars-refhost COMPONENT.wasm PORT [WORKERS]");
    };
    let workers: usize = rest.first().map(|w| w.parse()).transpose()?.unwrap_or(2);
    let engine = engine::engine(engine::PoolSize { instances: 1100 })?;
    engine::start_ticker(&engine);
    let component = wasmtime::component::Component::from_file(&engine, path)?;
    let linker = engine::linker(&engine, |_name, _args| Err("capability not allowed".to_string()))?;
    let prepared = Arc::new(engine::prepare(&linker, &component)?);
    let port: u16 = port.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(serve_forever(prepared, port))
}

async fn serve_forever(prepared: Arc<engine::Prepared>, port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("ready");
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let prepared = prepared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| serve(prepared.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
