//! The agent's native HTTP front: hyper owns the agent's public port, serves
//! `POST /v2/models/{name}/infer` and `POST /v1/functions/{name}:invoke` itself for the models and
//! callers Python has admitted, and forwards every other request, unchanged, to the agent's aiohttp
//! app on a loopback port.
//!
//! Python decides; the front caches decisions. Python teaches it, after answering an infer request
//! itself, a route (the name the client used -> a prepared guest and its limits) and a grant (a
//! digest of the request's credential headers, or "open", until an expiry). The front serves a
//! request only when both are present and unexpired; anything else, and every request the strict
//! OIP check (crate::infer) does not pass, goes to Python, which answers and may teach again.
//! Python clears everything when its set of models changes, so a reload or a changed spec.access
//! takes effect at once; a revoked credential stops working at the grant's expiry.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admission, Cap};
use crate::engine::{self, HostFn, Outcome, Prepared, StderrPipe};
use crate::figures::Figures;
use crate::infer;

pub type Body = BoxBody<Bytes, hyper::Error>;
// tars_common.oip_binary.HEADER_LENGTH: the binary tensor extension is Python's to decode.
const BINARY_HEADER: &str = "inference-header-content-length";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
// tars_common.http_limits: headers within 10 s, a body within 30 s, at most 1,024 connections.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 1024;
// A model whose calls answer within INLINE_MAX has them run on the front's own threads, as the
// reference host runs every call (no hand-off to the blocking pool: a tenth of a millisecond of CPU a
// request here); one slower call sends its calls to the blocking pool for INLINE_BACKOFF, so a guest
// made to loop holds a front thread once in a while at most, and never all of them (Front::inline_max).
// Wall-clock time: generous, so a quick call preempted on a busy machine does not count as slow.
const INLINE_MAX: Duration = Duration::from_millis(10);
const INLINE_BACKOFF: Duration = Duration::from_secs(10);

/// A model the front may run: what Python's route would run, with the same limits.
pub struct Route {
    pub label: String,
    pub model_name: String,
    pub version: String,
    pub prepared: Arc<Prepared>,
    pub memory_bytes: usize,
    pub instantiate_ticks: u64,
    pub cpu_ms: u64,
    pub wall_ms: u64,
    pub output_bytes: usize,
    // What the model may hold of the shared workers (crate::admission).
    cap: Cap,
    // The guest's host calls, all refused: models with capabilities are never taught to the front.
    host: HostFn,
    open_until: Mutex<Option<Instant>>,
    grants: Mutex<HashMap<[u8; 32], Instant>>,
    pace: Mutex<Pace>,
}

/// How quickly a model's calls have answered (see INLINE_MAX).
#[derive(Clone, Copy)]
enum Pace {
    Unknown,
    Quick,
    SlowUntil(Instant),
}

impl Route {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: String,
        model_name: String,
        version: String,
        prepared: Arc<Prepared>,
        memory_bytes: usize,
        instantiate_ticks: u64,
        cpu_ms: u64,
        wall_ms: u64,
        output_bytes: usize,
        cap: Cap,
        known: HashSet<String>,
        figures: Arc<Figures>,
    ) -> Self {
        let host = refuse_all(label.clone(), known, figures);
        Self {
            label,
            model_name,
            version,
            prepared,
            memory_bytes,
            instantiate_ticks,
            cpu_ms,
            wall_ms,
            output_bytes,
            cap,
            host,
            open_until: Mutex::new(None),
            grants: Mutex::new(HashMap::new()),
            pace: Mutex::new(Pace::Unknown),
        }
    }

    fn quick(&self, now: Instant) -> bool {
        match *self.pace.lock().unwrap() {
            Pace::Quick => true,
            Pace::SlowUntil(until) => now >= until,
            Pace::Unknown => false,
        }
    }

    fn took(&self, took: Duration) {
        let now = Instant::now();
        let mut pace = self.pace.lock().unwrap();
        *pace = match *pace {
            _ if took > INLINE_MAX => Pace::SlowUntil(now + INLINE_BACKOFF),
            Pace::SlowUntil(until) if now < until => Pace::SlowUntil(until),
            _ => Pace::Quick,
        };
    }

    fn admits(&self, credential: Option<[u8; 32]>, now: Instant) -> bool {
        if self.open_until.lock().unwrap().is_some_and(|until| now < until) {
            return true;
        }
        credential.is_some_and(|digest| {
            self.grants
                .lock()
                .unwrap()
                .get(&digest)
                .is_some_and(|until| now < *until)
        })
    }

    pub fn grant(&self, credential: Option<[u8; 32]>, until: Instant) {
        match credential {
            None => *self.open_until.lock().unwrap() = Some(until),
            Some(digest) => {
                let mut grants = self.grants.lock().unwrap();
                grants.retain(|_, expiry| *expiry > Instant::now());
                grants.insert(digest, until);
            }
        }
    }
}

/// The host call of a model that may call nothing: refused as Python's allowlist refuses it (the same
/// text), counted for Python's metrics and audit, without entering Python.
fn refuse_all(label: String, known: HashSet<String>, figures: Arc<Figures>) -> HostFn {
    Arc::new(move |name: String, _args: String| {
        let started = Instant::now();
        let text = format!("capability {name} is not allowed for model {label}");
        figures.refused(&label, &name, known.contains(&name), started.elapsed().as_secs_f64());
        Err(text)
    })
}

/// The two routes the front serves.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Infer,
    Invoke,
}

impl Kind {
    /// The route as aiohttp names it (the metrics' `route` label).
    pub fn path(self) -> &'static str {
        match self {
            Kind::Infer => "/v2/models/{name}/infer",
            Kind::Invoke => "/v1/functions/{name}:invoke",
        }
    }
}

/// Python's verdict on an outcome the front does not answer itself: (status, JSON body, Retry-After).
pub type Judge = Box<dyn Fn(Verdict) -> (u16, String, u32) + Send + Sync>;

pub struct Verdict {
    pub route: Kind,
    pub label: String,
    pub model_name: String,
    pub version: String,
    pub id: Option<String>,
    pub kind: &'static str,
    pub text: String,
    pub stderr: Vec<u8>,
    pub out_of_memory: bool,
}

pub struct Front {
    pub routes: RwLock<HashMap<String, Arc<Route>>>,
    upstream: SocketAddr,
    pub admission: Arc<Admission>,
    // Calls running on the front's own threads now, and how many may (fewer than its threads).
    inline: AtomicUsize,
    inline_max: usize,
    max_body: usize,
    pub figures: Arc<Figures>,
    judge: Judge,
}

impl Front {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        upstream: SocketAddr,
        threads: usize,
        workers: usize,
        max_queue: usize,
        max_body: usize,
        bounds: Vec<f64>,
        judge: Judge,
    ) -> Self {
        Self {
            routes: RwLock::new(HashMap::new()),
            upstream,
            admission: Arc::new(Admission::new(workers, max_queue)),
            inline: AtomicUsize::new(0),
            inline_max: threads.saturating_sub(1).max(1),
            max_body,
            figures: Arc::new(Figures::new(bounds)),
            judge,
        }
    }
}

/// The digest of a request's credential headers, exactly as sent (Python digests the same bytes),
/// or None when one of them is repeated (Python's reading of that is its own: forwarded).
pub fn credential_digest(headers: &HeaderMap) -> Option<[u8; 32]> {
    let mut digest = Sha256::new();
    for (i, name) in ["x-api-key", "authorization"].into_iter().enumerate() {
        let mut values = headers.get_all(name).iter();
        let value = values.next().map(HeaderValue::as_bytes).unwrap_or_default();
        if values.next().is_some() {
            return None;
        }
        if i > 0 {
            digest.update([0u8]);
        }
        digest.update(value);
    }
    Some(digest.finalize().into())
}

/// The model name (not percent-encoded) and route of a path the front may serve, else None.
fn served_route(path: &str) -> Option<(&str, Kind)> {
    let (name, kind) = match path.strip_prefix("/v2/models/").and_then(|p| p.strip_suffix("/infer")) {
        Some(name) => (name, Kind::Infer),
        None => (
            path.strip_prefix("/v1/functions/")?.strip_suffix(":invoke")?,
            Kind::Invoke,
        ),
    };
    (!name.is_empty() && !name.contains(['/', '%', '{', '}'])).then_some((name, kind))
}

pub async fn serve_forever(
    front: Arc<Front>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let Ok((socket, peer)) = accepted else { continue };
        // Past the cap the connection is closed at once, as tars_common.http_limits does.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        let front = front.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(front, peer, socket).await,
                // The handshake within the header timeout: a client stalling it is cut off like a slow one.
                Some(tls) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, tls.accept(socket)).await {
                        serve_connection(front, peer, stream).await
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection<I>(front: Arc<Front>, peer: SocketAddr, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upstream = Arc::new(tokio::sync::Mutex::new(None));
    // The client's address, for what is forwarded (the aiohttp app believes it from loopback only).
    let client = HeaderValue::from_str(&peer.ip().to_string()).ok();
    let service =
        hyper::service::service_fn(move |request| serve(front.clone(), upstream.clone(), client.clone(), request));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

type Upstream = Arc<tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Body>>>>;

async fn serve(
    front: Arc<Front>,
    upstream: Upstream,
    client: Option<HeaderValue>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = (request.method() == Method::POST)
        .then(|| served_route(request.uri().path()))
        .flatten()
        .and_then(|(name, kind)| Some((front.routes.read().unwrap().get(name).cloned()?, kind)))
        .filter(|(route, _)| {
            !request.headers().contains_key(BINARY_HEADER)
                && route.admits(credential_digest(request.headers()), started)
        });
    let Some((route, kind)) = route else {
        return Ok(forward(&front, &upstream, client, request.map(BodyExt::boxed)).await);
    };
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, front.max_body).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => {
            let error = format!("request body exceeds {} bytes", front.max_body);
            return Ok(finish(
                &front,
                &route,
                kind,
                started,
                json(StatusCode::PAYLOAD_TOO_LARGE, error_body(&error), 0),
            ));
        }
        Err(_) => {
            return Ok(json(
                StatusCode::REQUEST_TIMEOUT,
                error_body("request body not received in time"),
                0,
            ))
        }
    };
    let parsed = match kind {
        Kind::Infer => infer::parse_request(&body),
        Kind::Invoke => infer::parse_invoke(&body),
    };
    let Some(parsed) = parsed else {
        let request = Request::from_parts(parts, Full::new(body).map_err(|never| match never {}).boxed());
        return Ok(forward(&front, &upstream, client, request).await);
    };
    let response = run(&front, &route, kind, parsed).await;
    Ok(finish(&front, &route, kind, started, response))
}

fn finish(front: &Front, route: &Route, kind: Kind, started: Instant, response: Response<Body>) -> Response<Body> {
    let answer = (route.label.clone(), kind, response.status().as_u16());
    front.figures.answered(answer, started.elapsed().as_secs_f64());
    response
}

/// One guest call in a fresh instance, admitted fairly among the models (crate::admission).
async fn run(front: &Arc<Front>, route: &Arc<Route>, kind: Kind, request: infer::Request) -> Response<Body> {
    let Some(worker) = front.admission.acquire(&route.label, route.cap).await else {
        return json(
            StatusCode::TOO_MANY_REQUESTS,
            error_body("too many requests queued; retry later"),
            1,
        );
    };
    if route.quick(Instant::now()) {
        if let Some(inline) = Inline::take(&front.inline, front.inline_max) {
            // Epoch ticks are wall-clock time, and a guest here cannot wait in the host (its calls
            // are refused at once): the earlier of its deadlines bounds the call.
            let started = Instant::now();
            let answer = call(route, kind, request, route.cpu_ms.min(route.wall_ms));
            route.took(started.elapsed());
            drop(inline);
            drop(worker);
            return match answer {
                Ok(answer) => reply(answer),
                Err(verdict) => reply(judged(front, verdict).await),
            };
        }
    }
    // The worker is held until the guest has stopped, even when the client was told of a wall-clock
    // timeout first: a running guest cannot be cancelled, only stopped by its deadline.
    let call_front = front.clone();
    let call_route = route.clone();
    let id = request.id.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let answer = call(&call_route, kind, request, call_route.cpu_ms);
        call_route.took(started.elapsed());
        drop(worker);
        answer.unwrap_or_else(|verdict| (call_front.judge)(*verdict))
    });
    // Dropping the handle on a timeout leaves the call running to its CPU deadline, worker held.
    match tokio::time::timeout(Duration::from_millis(route.wall_ms), answer).await {
        Ok(Ok(answer)) => reply(answer),
        Ok(Err(_)) => json(StatusCode::INTERNAL_SERVER_ERROR, error_body("internal error"), 0),
        Err(_) => {
            let verdict = verdict(route, kind, id, "wall", String::new(), Default::default());
            reply(judged(front, Box::new(verdict)).await)
        }
    }
}

/// A call running on one of the front's own threads, counted while it runs.
struct Inline<'a>(&'a AtomicUsize);

impl<'a> Inline<'a> {
    fn take(running: &'a AtomicUsize, max: usize) -> Option<Self> {
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(running))
    }
}

impl Drop for Inline<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Python's judgement, off the front's threads (it takes the GIL).
async fn judged(front: &Arc<Front>, verdict: Box<Verdict>) -> (u16, String, u32) {
    let front = front.clone();
    let judged = tokio::task::spawn_blocking(move || (front.judge)(*verdict)).await;
    judged.unwrap_or((500, error_body("internal error"), 0))
}

fn reply((status, body, retry): (u16, String, u32)) -> Response<Body> {
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
        retry,
    )
}

fn verdict(
    route: &Route,
    served: Kind,
    id: Option<String>,
    kind: &'static str,
    text: String,
    stderr: StderrPipe,
) -> Verdict {
    let state = stderr.0.lock().unwrap();
    Verdict {
        route: served,
        label: route.label.clone(),
        model_name: route.model_name.clone(),
        version: route.version.clone(),
        id,
        kind,
        text,
        stderr: state.head.clone(),
        out_of_memory: state.out_of_memory,
    }
}

/// Blocking: starts the sandbox, runs it within `budget_ms`, and answers; what is not a strict success
/// is returned for Python to judge.
fn call(
    route: &Route,
    served: Kind,
    request: infer::Request,
    budget_ms: u64,
) -> Result<(u16, String, u32), Box<Verdict>> {
    let stderr = StderrPipe::default();
    let outcome = match engine::instantiate(
        &route.prepared,
        route.memory_bytes,
        route.instantiate_ticks,
        stderr.clone(),
        Some(route.host.clone()),
    ) {
        Ok((store, handle)) => engine::call(store, handle, request.guest_input, engine::epoch_ticks(budget_ms)),
        Err(error) => Outcome::Trap(format!("{error:?}")),
    };
    let (kind, text) = match outcome {
        Outcome::Ok(output) => {
            if output.len() <= route.output_bytes {
                match served {
                    Kind::Infer => {
                        if let Some(body) =
                            infer::answer(&output, &route.model_name, &route.version, request.id.as_deref())
                        {
                            return Ok((200, body, 0));
                        }
                    }
                    Kind::Invoke if infer::is_json(&output) => return Ok((200, output, 0)),
                    Kind::Invoke => {}
                }
            }
            ("ok", output)
        }
        Outcome::Rejected(text) => ("rejected", text),
        // The wall-clock limit, when it was the earlier of the two budgets.
        Outcome::Timeout if budget_ms < route.cpu_ms => ("wall", String::new()),
        Outcome::Timeout => ("timeout", String::new()),
        Outcome::Trap(text) => ("trap", text),
    };
    Err(Box::new(verdict(route, served, request.id, kind, text, stderr)))
}

fn error_body(error: &str) -> String {
    serde_json::json!({ "error": error }).to_string()
}

fn json(status: StatusCode, body: String, retry_after: u32) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if retry_after > 0 {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    }
    response
}

/// The request, with the client's address appended to `X-Forwarded-For`, to the aiohttp app over this
/// client connection's own upstream connection (HTTP/1 serves a connection's requests one at a time,
/// so one upstream connection per client).
async fn forward(
    front: &Front,
    upstream: &Upstream,
    client: Option<HeaderValue>,
    mut request: Request<Body>,
) -> Response<Body> {
    if let Some(client) = client {
        request.headers_mut().append(X_FORWARDED_FOR, client);
    }
    let mut sender = upstream.lock().await;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(front.upstream).await;
    }
    let answered = match sender.as_mut() {
        Some(s) => match s.ready().await {
            Ok(()) => s.send_request(request).await.ok(),
            Err(_) => None,
        },
        None => None,
    };
    match answered {
        Some(response) => response.map(BodyExt::boxed),
        None => {
            *sender = None;
            json(StatusCode::BAD_GATEWAY, error_body("agent unavailable"), 1)
        }
    }
}

async fn connect(address: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Body>> {
    let stream = TcpStream::connect(address).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}
