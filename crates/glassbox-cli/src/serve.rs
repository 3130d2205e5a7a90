//! `glassbox serve`: a local dashboard over the methods. One page (compiled in: no CDN, no
//! download), a JSON API that takes the CLI's options and returns the `--json` results, and
//! the pictures of `--plot` as SVG.
//!
//! Limits: request bodies of at most `MAX_BODY` bytes (plots `MAX_PLOT_BODY`), prompts of at
//! most `--max-prompt-chars` characters, one analysis at a time with at most `--max-queue`
//! waiting (503 past that), at most `--max-connections` connections open (one more is
//! answered 503 and closed), and `--read-timeout` seconds for a request's headers (an idle
//! kept-alive connection is closed after as long) and as many for its body (408): a client
//! that trickles its request holds a connection, never the analysis. The model is loaded once and shared; each analysis runs on a
//! blocking thread, so a slow one never stalls the page, the status endpoint or the plots.
//! Nothing in a request names a file. A request that fails (malformed, too large, an error
//! or even a panic in the method) gets a JSON `{"error": ...}` answer and the server goes on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use glassbox::methods::catalog::{self, InputSpec};
use glassbox::schema::OptionSchema;
use glassbox::Model;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body of a method call (prompts and options).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request body of a plot (a result as JSON).
pub const MAX_PLOT_BODY: usize = 4 * 1024 * 1024;

const PAGE: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/app.js");
const STYLE: &str = include_str!("../assets/dashboard/app.css");

/// Whether the dashboard runs `entry`: every method whose input is a prompt or a prompt set
/// (or the weights alone), when the server has what it needs (an SAE, a second model).
fn offered(entry: &dyn catalog::Entry, state: &AppState) -> bool {
    let n = entry.needs();
    (!n.sae || state.sae.is_some()) && (!n.model_b || state.model_b.is_some()) && (!n.transcoders || state.transcoders.is_some())
}

/// `glassbox serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Address to bind; the default takes connections from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Analyses that may wait while one runs; more get 503 (busy).
    #[arg(long, default_value_t = 8)]
    pub max_queue: usize,
    /// Longest prompt (and answer) accepted, in characters.
    #[arg(long, default_value_t = 4000)]
    pub max_prompt_chars: usize,
    /// Connections open at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, and again its body; an idle
    /// connection is closed after as long.
    #[arg(long, default_value_t = 10)]
    pub read_timeout: u64,
    /// An SAE or transcoder folder, for the SAE methods.
    #[arg(long)]
    pub sae: Option<std::path::PathBuf>,
    /// A second model (registry name, GGUF file or folder), for cross-model alignment.
    #[arg(long)]
    pub model_b: Option<String>,
    /// A transcoder set's folder, for attribution graphs.
    #[arg(long)]
    pub transcoders: Option<std::path::PathBuf>,
}

/// What is running now.
struct Running {
    command: String,
    started: Instant,
    done: usize,
    total: usize,
}

struct AppState {
    model: Model,
    sae: Option<glassbox::sae::Sae>,
    model_b: Option<Model>,
    transcoders: Option<glassbox::sae::set::TranscoderSet>,
    max_queue: usize,
    max_prompt_chars: usize,
    read_timeout: Duration,
    /// One permit: the analysis running.
    gate: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    running: Mutex<Option<Running>>,
    completed: AtomicU64,
    /// `Host` headers accepted (when bound to a loopback address): a page on another site
    /// cannot reach this server through DNS rebinding.
    allowed_hosts: Option<Vec<String>>,
}

/// An answer with a status and a message: `{"error": message}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(json!({ "error": glassbox::error::printable(&self.1) }))).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

impl From<glassbox::Error> for ApiError {
    fn from(e: glassbox::Error) -> ApiError {
        use glassbox::Error as E;
        let status = match &e {
            E::NonFinite(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Io { .. } | E::NotAModel { .. } | E::Corrupt { .. } | E::UnknownArchitecture { .. } | E::MissingMetadata { .. } | E::MissingTensor { .. } | E::UnusedTensors { .. } | E::TensorShape { .. } | E::Fetch { .. } | E::Candle(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// The body of `POST /api/<method>`: the input's keys (`prompt`, `correct`, `incorrect`,
/// `corrupted`, `task`, `n`, `seed`, `corruption`) and `options`, the method's options by the
/// names of its CLI flags (missing keys take their defaults; unknown ones are refused).
#[derive(Default)]
struct MethodRequest {
    input: InputSpec,
    options: Value,
}

impl MethodRequest {
    /// The request from its JSON body; an unknown key is refused by name.
    fn parse(bytes: &[u8]) -> ApiResult<MethodRequest> {
        let Value::Object(mut body) = parse_json::<Value>(bytes)? else {
            return Err(ApiError::bad("the request is not valid JSON for this endpoint: expected an object of input keys and `options`"));
        };
        let options = body.remove("options").unwrap_or(Value::Null);
        let keys: Vec<&str> = InputSpec::fields().iter().map(|f| f.name).collect();
        if let Some(k) = body.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(ApiError::bad(format!("unknown field `{}`: a request holds the input keys ({}) and `options`", glassbox::error::printable(k), keys.join(", "))));
        }
        let input: InputSpec = serde_json::from_value(Value::Object(body)).map_err(|e| ApiError::bad(format!("the request's input: {e}")))?;
        Ok(MethodRequest { input, options })
    }

    /// Error unless every text is within the server's limit.
    fn check_lengths(&self, max: usize) -> ApiResult<()> {
        let i = &self.input;
        let texts = [("prompt", &i.prompt), ("correct", &i.correct), ("incorrect", &i.incorrect), ("corrupted", &i.corrupted)];
        for (name, t) in texts {
            if let Some(t) = t {
                let n = t.chars().count();
                if n > max {
                    return Err(ApiError(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the {name} has {n} characters; this server takes at most {max} (start it with a larger --max-prompt-chars)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Progress of the running analysis, shared with the status endpoint.
struct Progress<'a>(&'a AppState);

impl Progress<'_> {
    fn set(&self, done: usize, total: usize) {
        if let Ok(mut r) = self.0.running.lock() {
            if let Some(r) = r.as_mut() {
                r.done = done;
                r.total = total;
            }
        }
    }
}

/// Runs `method` on the model: its envelope, as `--json` prints it.
fn run_method(state: &Arc<AppState>, method: &str, req: &MethodRequest) -> ApiResult<Value> {
    let entry = catalog::entry(method).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    // Nothing in a request names a file on this machine.
    for f in entry.fields() {
        let file = matches!(&f.kind, glassbox::schema::Kind::Optional { value } if matches!(value.as_ref(), glassbox::schema::Kind::Text { format: Some(glassbox::methods::steering::FILE) }));
        if file && req.options.get(f.name).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad(format!("`{}` names a file; the dashboard reads no file from a request (use the command line)", f.name)));
        }
    }
    if req.input.prompts.is_some() {
        return Err(ApiError::bad("`prompts` names a file; the dashboard reads no file from a request (use --task, or the command line)"));
    }
    let cx = catalog::Context { model: &state.model, sae: state.sae.as_ref(), model_b: state.model_b.as_ref(), transcoders: state.transcoders.as_ref() };
    let controls = glassbox::controls::Controls {
        progress: Some({
            let st = state.clone();
            Arc::new(move |p: &glassbox::controls::Progress| Progress(&st).set(p.done, p.total))
        }),
        cancel: None,
        poll: None,
    };
    let envelope = glassbox::controls::with(&controls, || catalog::run(entry, &cx, &req.input, &req.options))?;
    serde_json::to_value(&envelope).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the result: {e}")))
}

/// Clears the running analysis when the blocking task ends (normally or by a panic).
struct RunningGuard<'a>(&'a AppState);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.0.running.lock() {
            *r = None;
        }
        self.0.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a request waiting for the gate, until it gets it or its client goes away.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bodies up to this size are read to the end even when over the limit, so that the client
/// (which is still sending) reads the 413 answer instead of a broken connection.
const DRAIN: usize = 1024 * 1024;

/// The request's body, at most `limit` bytes, within `timeout`; else 413 or 408 saying so.
async fn body_bytes(req: Request, limit: usize, timeout: Duration) -> ApiResult<Bytes> {
    let timed_out = || ApiError(StatusCode::REQUEST_TIMEOUT, format!("the request's body did not arrive within {} s", timeout.as_secs()));
    tokio::time::timeout(timeout, body_bytes_now(req, limit)).await.map_err(|_| timed_out())?
}

async fn body_bytes_now(req: Request, limit: usize) -> ApiResult<Bytes> {
    let too_large = |n: String| ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is {n}; this server takes at most {} KiB", limit / 1024));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > DRAIN.max(limit) as u64) {
        return Err(too_large(format!("{len} bytes")));
    }
    let bytes = axum::body::to_bytes(req.into_body(), DRAIN.max(limit)).await.map_err(|_| too_large("larger than that".into()))?;
    if bytes.len() > limit {
        return Err(too_large(format!("{} bytes", bytes.len())));
    }
    Ok(bytes)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("the request is not valid JSON for this endpoint: {e}")))
}

async fn method(State(state): State<Arc<AppState>>, Path(command): Path<String>, req: Request) -> Response {
    method_inner(state, command, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn method_inner(state: Arc<AppState>, command: String, req: Request) -> ApiResult<Response> {
    let known: Vec<&str> = catalog::CATALOG.iter().filter(|e| offered(**e, &state)).map(|e| e.name()).collect();
    if !known.contains(&command.as_str()) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no method `{}` here; the methods are: {}", glassbox::error::printable(&command), known.join(", "))));
    }
    let body = MethodRequest::parse(&body_bytes(req, MAX_BODY, state.read_timeout).await?)?;
    body.check_lengths(state.max_prompt_chars)?;

    // One analysis at a time; at most `max_queue` wait.
    let permit = match state.gate.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let joined = state.waiting.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| (w < state.max_queue).then_some(w + 1));
            if joined.is_err() {
                let busy = state.running.lock().ok().and_then(|r| r.as_ref().map(|r| r.command.clone())).unwrap_or_default();
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("busy: `{busy}` is running and {} requests are waiting (--max-queue {}); try again when it is done", state.max_queue, state.max_queue),
                ));
            }
            let _waiting = WaitingGuard(&state.waiting);
            state.gate.clone().acquire_owned().await.map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping".into()))?
        }
    };
    let st = state.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if let Ok(mut r) = st.running.lock() {
            *r = Some(Running { command: command.clone(), started: Instant::now(), done: 0, total: 0 });
        }
        let _running = RunningGuard(&st);
        run_method(&st, &command, &body)
    })
    .await;
    match joined {
        Ok(Ok(v)) => Ok(no_store(axum::Json(v).into_response())),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the analysis failed unexpectedly ({e}); this is a bug in glassbox, please report it with the request"))),
    }
}

/// The body of `POST /api/plot/<method>`: a result as the method returned it (the envelope's
/// `result`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlotRequest {
    result: Value,
}

async fn plot(State(state): State<Arc<AppState>>, Path(kind): Path<String>, req: Request) -> Response {
    let name = kind.clone();
    answer_from_result(&kind, req, state.read_timeout, "image/svg+xml; charset=utf-8", "drawing failed unexpectedly", move |entry, result| {
        if !entry.has_plot() {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("`{name}` draws no picture")));
        }
        Ok(entry.plot(result)?.map(|s| s.finish()).unwrap_or_default())
    })
    .await
}

/// `POST /api/report/<method>`: the result as the CLI's text report.
async fn report(State(state): State<Arc<AppState>>, Path(kind): Path<String>, req: Request) -> Response {
    answer_from_result(&kind, req, state.read_timeout, "text/plain; charset=utf-8", "the report failed unexpectedly", |entry, result| Ok(entry.report(result, 25)?)).await
}

/// Answers a `PlotRequest` to method `kind` with the text `make(entry, result)` gives, as
/// `content_type`. `make` runs off the event loop (it is quick, but a large result is still
/// work); `failed` begins the message when it dies (a bug).
async fn answer_from_result(kind: &str, req: Request, timeout: Duration, content_type: &'static str, failed: &str, make: impl FnOnce(&'static dyn catalog::Entry, &Value) -> Result<String, ApiError> + Send + 'static) -> Response {
    let text = async {
        let body: PlotRequest = parse_json(&body_bytes(req, MAX_PLOT_BODY, timeout).await?)?;
        let entry = catalog::entry(kind).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
        match tokio::task::spawn_blocking(move || make(entry, &body.result)).await {
            Ok(r) => r,
            Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{failed} ({e})"))),
        }
    }
    .await;
    match text {
        Ok(s) => no_store(([(header::CONTENT_TYPE, content_type)], s).into_response()),
        Err(e) => e.into_response(),
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let running = state.running.lock().ok().and_then(|r| {
        r.as_ref().map(|r| json!({ "command": r.command, "elapsed_s": r.started.elapsed().as_secs_f64(), "done": r.done, "total": r.total }))
    });
    no_store(
        axum::Json(json!({
            "running": running,
            "queued": state.waiting.load(Ordering::SeqCst),
            "max_queue": state.max_queue,
            "completed": state.completed.load(Ordering::Relaxed),
        }))
        .into_response(),
    )
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.model.config();
    axum::Json(json!({
        "model": state.model.name(),
        "architecture": c.architecture,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "d_model": c.d_model,
        "commands": catalog::CATALOG.iter().filter(|e| offered(**e, &state)).map(|e| e.name()).collect::<Vec<_>>(),
        "methods": catalog::describe().into_iter().filter(|d| catalog::entry(d.name).is_ok_and(|e| offered(e, &state))).collect::<Vec<_>>(),
        "model_b": state.model_b.as_ref().map(|m| m.name().to_string()),
        "sae": state.sae.as_ref().map(|s| s.cfg.hook.to_string()),
        "limits": { "max_body_bytes": MAX_BODY, "max_prompt_chars": state.max_prompt_chars, "max_queue": state.max_queue },
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such page; the dashboard is at / and the API under /api/ (GET /api/info lists it)".into())
}

/// Refuses requests whose `Host` is not this server's loopback name (DNS rebinding).
async fn check_host(State(state): State<Arc<AppState>>, headers: HeaderMap, req: Request<Body>, next: axum::middleware::Next) -> Response {
    if let Some(allowed) = &state.allowed_hosts {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return ApiError(StatusCode::MISDIRECTED_REQUEST, format!("this server answers to {} only", allowed.join(", "))).into_response();
        }
    }
    next.run(req).await
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/api/info", get(info))
        .route("/api/status", get(status))
        .route("/api/plot/{kind}", post(plot))
        .route("/api/report/{kind}", post(report))
        .route("/api/{command}", post(method))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

/// Loads nothing itself: serves `model` until the process is stopped.
pub fn serve(model: Model, a: &ServeArgs) -> Result<()> {
    if a.max_prompt_chars == 0 || a.max_prompt_chars > 1_000_000 {
        anyhow::bail!("--max-prompt-chars {}: give 1 to 1000000", a.max_prompt_chars);
    }
    if a.max_queue > 10_000 {
        anyhow::bail!("--max-queue {}: give 0 to 10000", a.max_queue);
    }
    let ip: std::net::IpAddr = match a.host.as_str() {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h.parse().with_context(|| format!("--host {h}: give an IP address such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"))?,
    };
    let sae = a.sae.as_ref().map(|dir| glassbox::sae::Sae::load(dir, None).with_context(|| format!("loading the SAE in {}", dir.display()))).transpose()?;
    let model_b = a.model_b.as_ref().map(|name| crate::methods::load(name, None)).transpose()?;
    let transcoders = a.transcoders.as_ref().map(|dir| crate::methods::load_transcoders(dir, &model)).transpose()?;
    if a.max_connections == 0 || a.max_connections > 100_000 {
        anyhow::bail!("--max-connections {}: give 1 to 100000", a.max_connections);
    }
    if a.read_timeout == 0 || a.read_timeout > 3600 {
        anyhow::bail!("--read-timeout {}: give 1 to 3600 seconds", a.read_timeout);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the server's runtime")?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, a.port))
            .await
            .with_context(|| format!("cannot listen on {ip}:{}; is another server using the port? (try --port 0 for any free port)", a.port))?;
        let addr = listener.local_addr()?;
        let allowed_hosts = ip.is_loopback().then(|| {
            let p = addr.port();
            let mut hosts = vec![format!("127.0.0.1:{p}"), format!("localhost:{p}"), format!("[::1]:{p}")];
            if !hosts.contains(&addr.to_string()) {
                hosts.push(addr.to_string());
            }
            hosts
        });
        let state = Arc::new(AppState {
            model,
            sae,
            model_b,
            transcoders,
            max_queue: a.max_queue,
            max_prompt_chars: a.max_prompt_chars,
            read_timeout: Duration::from_secs(a.read_timeout),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
            running: Mutex::new(None),
            completed: AtomicU64::new(0),
            allowed_hosts,
        });
        let shown = if ip.is_unspecified() { SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()) } else { addr };
        println!("glassbox dashboard for {} listening on http://{shown}/ (Ctrl-C stops it)", state.model.name());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        accept_loop(listener, router(state), a.max_connections, Duration::from_secs(a.read_timeout)).await;
        Ok(())
    });
    // An analysis still running is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// Serves connections until Ctrl-C: at most `max_connections` at once (one more gets a 503
/// and is closed), each with `read_timeout` for a request's headers.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, max_connections: usize, read_timeout: Duration) {
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait, do not spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut http = hyper::server::conn::http1::Builder::new();
                    // A client may close its sending side once its request is out (shutdown of
                    // writes): with hyper's default, a request read together with that end of file
                    // closed the connection unanswered.
                    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(read_timeout).half_close(true);
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream, max_connections));
            }
        }
    }
}

/// Answers a connection past the cap with 503 and closes it. What the client sent in the first
/// moments is read first, so that closing does not reset the connection before it reads the
/// answer.
async fn refuse(mut stream: tokio::net::TcpStream, max_connections: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    let body = json!({ "error": format!("too many connections: this server keeps at most {max_connections} open (--max-connections); try again shortly") }).to_string();
    let answer = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\ncache-control: no-store\r\n\r\n{body}", body.len());
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
