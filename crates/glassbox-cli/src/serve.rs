//! `glassbox serve`: a local dashboard over the methods. One page (compiled in: no CDN, no
//! download), a JSON API that takes the CLI's options and returns the `--json` results, and
//! the pictures of `--plot` as SVG.
//!
//! Limits: request bodies of at most `MAX_BODY` bytes (plots `MAX_PLOT_BODY`), prompts of at
//! most `--max-prompt-chars` characters, one analysis at a time with at most `--max-queue`
//! waiting (503 past that). The model is loaded once and shared; each analysis runs on a
//! blocking thread, so a slow one never stalls the page, the status endpoint or the plots.
//! Nothing in a request names a file. A request that fails (malformed, too large, an error
//! or even a panic in the method) gets a JSON `{"error": ...}` answer and the server goes on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use glassbox::methods::analyze::{analyze, AnalyzeOptions};
use glassbox::methods::attention::{attention_patterns, AttentionOptions};
use glassbox::methods::attribution::{attribute, AttributionOptions};
use glassbox::methods::composition::{all_composition_scores, CompositionOptions};
use glassbox::methods::edges::{edge_attribution, EdgeOptions};
use glassbox::methods::logit_lens::{logit_lens, LogitLensOptions};
use glassbox::methods::patching::{exact_patching, PatchingOptions};
use glassbox::methods::path_patching::{path_patching, PathPatchingOptions};
use glassbox::methods::scrubbing::{causal_scrubbing, ScrubOptions};
use glassbox::methods::stability::{attribution_stability_with_progress, StabilityOptions};
use glassbox::methods::token_attribution::{token_attribution, TokenAttributionOptions};
use glassbox::methods::{Contrast, Head, Prompt};
use glassbox::Model;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Largest request body of a method call (prompts and options).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request body of a plot (a result as JSON).
pub const MAX_PLOT_BODY: usize = 4 * 1024 * 1024;

const PAGE: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/app.js");
const STYLE: &str = include_str!("../assets/dashboard/app.css");

/// The commands `POST /api/<command>` runs.
pub const COMMANDS: &[&str] = &[
    "run",
    "analyze",
    "attribution",
    "patch",
    "path-patch",
    "logit-lens",
    "attention",
    "edges",
    "token-attribution",
    "stability",
    "composition",
    "scrub",
];

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
    max_queue: usize,
    max_prompt_chars: usize,
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

/// The body of `POST /api/<command>`. Fields a command does not use are refused by name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MethodRequest {
    prompt: Option<String>,
    correct: Option<String>,
    incorrect: Option<String>,
    corrupted: Option<String>,
    /// Heads for `attention` and `composition` (`L9H6`, `9.6`).
    heads: Option<Vec<String>>,
    /// The receiver of `path-patch` as the CLI writes it (`logits`, `L10H7.q`).
    receiver: Option<String>,
    /// `scrub`'s hypothesis (`L1H0=io,L1H2=subject`).
    hypothesis: Option<String>,
    /// How many next tokens `run` lists.
    top_k: Option<usize>,
    /// How many generated IOI prompts `scrub` runs on (default 32).
    n: Option<usize>,
    /// The library's option struct of the method; missing keys take their defaults.
    #[serde(default)]
    options: Value,
}

impl MethodRequest {
    fn field<'a>(&'a self, v: &'a Option<String>, name: &str, command: &str) -> ApiResult<&'a str> {
        v.as_deref().ok_or_else(|| ApiError::bad(format!("`{command}` needs `{name}` in the request")))
    }

    fn contrast(&self, model: &Model, command: &str) -> ApiResult<Contrast> {
        let (p, c, i) = (self.field(&self.prompt, "prompt", command)?, self.field(&self.correct, "correct", command)?, self.field(&self.incorrect, "incorrect", command)?);
        Ok(Contrast::new(model, p, c, i, self.corrupted.as_deref().filter(|s| !s.is_empty()))?)
    }

    fn prompt(&self, model: &Model, command: &str) -> ApiResult<Prompt> {
        let (p, c, i) = (self.field(&self.prompt, "prompt", command)?, self.field(&self.correct, "correct", command)?, self.field(&self.incorrect, "incorrect", command)?);
        Ok(Prompt::new(model, p, c, i)?)
    }

    fn options<T: DeserializeOwned + Default>(&self, command: &str) -> ApiResult<T> {
        if self.options.is_null() {
            return Ok(T::default());
        }
        serde_json::from_value(self.options.clone()).map_err(|e| ApiError::bad(format!("the options of `{command}`: {e}")))
    }

    fn heads(&self) -> ApiResult<Option<Vec<Head>>> {
        self.heads
            .as_ref()
            .map(|hs| hs.iter().map(|h| h.parse::<Head>().map_err(ApiError::from)).collect())
            .transpose()
    }

    /// Error unless every text is within the server's limit.
    fn check_lengths(&self, max: usize) -> ApiResult<()> {
        let texts = [("prompt", &self.prompt), ("correct", &self.correct), ("incorrect", &self.incorrect), ("corrupted", &self.corrupted), ("hypothesis", &self.hypothesis)];
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

fn to_json<T: Serialize>(v: &T) -> ApiResult<Value> {
    glassbox::check_finite(v)?;
    serde_json::to_value(v).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the result: {e}")))
}

/// Runs `command` on the model: the `--json` result of the CLI's subcommand.
fn run_method(model: &Model, command: &str, req: &MethodRequest, progress: &Progress) -> ApiResult<Value> {
    match command {
        "run" => {
            let prompt = req.field(&req.prompt, "prompt", command)?;
            let top_k = req.top_k.unwrap_or(10);
            if top_k == 0 || top_k > 1000 {
                return Err(ApiError::bad(format!("top_k {top_k}: give 1 to 1000")));
            }
            to_json(&crate::run(model, prompt, top_k).map_err(|e| ApiError::bad(format!("{e:#}")))?)
        }
        "analyze" => {
            let c = req.contrast(model, command)?;
            to_json(&analyze(model, &c, &req.options::<AnalyzeOptions>(command)?)?)
        }
        "attribution" => {
            let c = req.contrast(model, command)?;
            let a = attribute(model, &c, &req.options::<AttributionOptions>(command)?)?;
            let mut v = to_json(&a)?;
            if let Value::Object(m) = &mut v {
                m.insert("contrast".into(), to_json(&c)?);
            }
            Ok(v)
        }
        "patch" => {
            let c = req.contrast(model, command)?;
            to_json(&exact_patching(model, &c, &req.options::<PatchingOptions>(command)?)?)
        }
        "path-patch" => {
            let c = req.contrast(model, command)?;
            let mut o: PathPatchingOptions = req.options(command)?;
            if let Some(r) = &req.receiver {
                o.receiver = crate::methods::parse_receiver(r).map_err(|e| ApiError::bad(format!("{e:#}")))?;
            }
            to_json(&path_patching(model, &c, &o)?)
        }
        "logit-lens" => to_json(&logit_lens(model, &req.prompt(model, command)?, &req.options::<LogitLensOptions>(command)?)?),
        "token-attribution" => to_json(&token_attribution(model, &req.prompt(model, command)?, &req.options::<TokenAttributionOptions>(command)?)?),
        "edges" => {
            let c = req.contrast(model, command)?;
            to_json(&edge_attribution(model, &c, &req.options::<EdgeOptions>(command)?)?)
        }
        "stability" => {
            let p = req.prompt(model, command)?;
            let o: StabilityOptions = req.options(command)?;
            progress.set(0, o.n_corruptions);
            to_json(&attribution_stability_with_progress(model, &p, &o, &mut |done, total| progress.set(done, total))?)
        }
        "attention" => {
            let tokens = model.tokenize(req.field(&req.prompt, "prompt", command)?)?;
            let mut o: AttentionOptions = req.options(command)?;
            if let Some(h) = req.heads()? {
                o.heads = Some(h);
            }
            to_json(&attention_patterns(model, &tokens, &o)?)
        }
        "composition" => {
            let heads = req.heads()?.filter(|h| !h.is_empty()).ok_or_else(|| ApiError::bad("`composition` needs `heads`, e.g. [\"L1H0\", \"L1H2\"]"))?;
            to_json(&all_composition_scores(model, &heads, &req.options::<CompositionOptions>(command)?)?)
        }
        "scrub" => {
            let mut o: ScrubOptions = req.options(command)?;
            if let Some(h) = &req.hypothesis {
                o.hypothesis = crate::methods::parse_hypothesis(h).map_err(|e| ApiError::bad(format!("{e:#}")))?;
            }
            if req.top_k.is_some() {
                return Err(ApiError::bad("`scrub` takes `n` (how many IOI prompts), not `top_k`"));
            }
            let n = req.n.unwrap_or(32);
            let prompts = glassbox::tasks::ioi::generate(model, n, o.seed, glassbox::tasks::ioi::Corruption::NameSwap)?;
            let set = glassbox::tasks::ioi::scrub_prompts(model, &prompts)?;
            to_json(&causal_scrubbing(model, &set, &o)?)
        }
        other => Err(ApiError(StatusCode::NOT_FOUND, format!("no command `{other}`; the commands are: {}", COMMANDS.join(", ")))),
    }
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

/// The request's body, at most `limit` bytes, or 413 saying so.
async fn body_bytes(req: Request, limit: usize) -> ApiResult<Bytes> {
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
    if !COMMANDS.contains(&command.as_str()) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no command `{}`; the commands are: {}", glassbox::error::printable(&command), COMMANDS.join(", "))));
    }
    let body: MethodRequest = parse_json(&body_bytes(req, MAX_BODY).await?)?;
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
        run_method(&st.model, &command, &body, &Progress(&st))
    })
    .await;
    match joined {
        Ok(Ok(v)) => Ok(no_store(axum::Json(v).into_response())),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the analysis failed unexpectedly ({e}); this is a bug in glassbox, please report it with the request"))),
    }
}

/// The body of `POST /api/plot/<kind>`: a result as the method returned it, and for `analyze`
/// the attention types of the circuit's heads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlotRequest {
    result: Value,
    #[serde(default)]
    head_types: Option<BTreeMap<String, String>>,
}

async fn plot(Path(kind): Path<String>, req: Request) -> Response {
    let svg = async {
        let body: PlotRequest = parse_json(&body_bytes(req, MAX_PLOT_BODY).await?)?;
        // Drawing is quick, but a large result is still work: keep it off the event loop.
        let drawn = tokio::task::spawn_blocking(move || glassbox::plot::plot_value(&kind, &body.result, body.head_types.as_ref()).map(|s| s.finish())).await;
        match drawn {
            Ok(r) => Ok(r?),
            Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("drawing failed unexpectedly ({e})"))),
        }
    }
    .await;
    match svg {
        Ok(s) => no_store(([(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")], s).into_response()),
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
    let c = &state.model.config;
    axum::Json(json!({
        "model": state.model.name,
        "architecture": c.architecture,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "d_model": c.d_model,
        "commands": COMMANDS,
        "plots": glassbox::plot::KINDS,
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
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the server's runtime")?;
    runtime.block_on(async move {
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
            max_queue: a.max_queue,
            max_prompt_chars: a.max_prompt_chars,
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
            running: Mutex::new(None),
            completed: AtomicU64::new(0),
            allowed_hosts,
        });
        let shown = if ip.is_unspecified() { SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()) } else { addr };
        println!("glassbox dashboard for {} listening on http://{shown}/ (Ctrl-C stops it)", state.model.name);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(state)).with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await.context("serving")
    })
}
