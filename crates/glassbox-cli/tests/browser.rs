//! The dashboard in a real browser: Debian's chromium, headless, driven over WebDriver by
//! chromedriver. Starts `glassbox serve` on a tiny fixture model, submits a prompt, waits for
//! the heatmap (one cell per head), checks that the circuit tab lists the analysis' circuit
//! and that hovering a head shows its attention pattern, and saves screenshots.
//!
//! Runs when chromium and chromedriver are installed (`CHROMIUM`, `CHROMEDRIVER` or
//! /usr/bin); `GLASSBOX_BROWSER_TEST=1` (set by .ci/run) makes their absence a failure.
//! `GLASSBOX_BROWSER_MODEL` picks another model, `GLASSBOX_SCREENSHOT_DIR` where the
//! screenshots go (default: the target's test folder).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, post, Server};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find(env: &str, default: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    p.is_file().then_some(p)
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(path: &PathBuf) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(path)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let d = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let t = Instant::now();
        while ureq::get(&format!("{}/status", d.url)).call().ok().and_then(|r| r.into_json::<Value>().ok()).is_none_or(|v| v["value"]["ready"] != true) {
            assert!(t.elapsed() < Duration::from_secs(30), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }
}

/// A WebDriver session.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.driver.url, self.id)).call();
    }
}

impl<'a> Session<'a> {
    fn new(driver: &'a Driver, chromium: &PathBuf, profile: &std::path::Path) -> Session<'a> {
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1360,1500".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": { "binary": chromium, "args": args } } } });
        let v = send(ureq::post(&format!("{}/session", driver.url)), Some(caps));
        Session { driver, id: v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.driver.url, self.id)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        send(ureq::post(&self.url(path)), Some(body))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
    }

    fn element(&self, css: &str) -> Value {
        let v = self.post("/element", json!({ "using": "css selector", "value": css }));
        json!({ ELEMENT: v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element `{css}`: {v}")) })
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.post(&format!("/element/{}/click", e[ELEMENT].as_str().unwrap()), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        let id = e[ELEMENT].as_str().unwrap();
        self.post(&format!("/element/{id}/clear"), json!({}));
        self.post(&format!("/element/{id}/value"), json!({ "text": text }));
    }

    /// Moves the mouse over the element (a real pointer move, so the page sees `mouseover`).
    fn hover(&self, css: &str) {
        let e = self.element(css);
        let action = json!({ "actions": [{ "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [{ "type": "pointerMove", "duration": 50, "origin": e, "x": 0, "y": 0 }] }] });
        self.post("/actions", action);
    }

    /// Waits until `script` returns something other than null/false, or fails with the page's error.
    fn wait_for(&self, what: &str, script: &str, secs: u64) -> Value {
        let t = Instant::now();
        loop {
            let v = self.js(script, json!([]));
            if !v.is_null() && v != false {
                return v;
            }
            let err = self.js("const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : null;", json!([]));
            assert!(err.is_null(), "the page shows an error while waiting for {what}: {err}");
            assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &std::path::Path) {
        let v = send(ureq::get(&self.url("/screenshot")), None);
        let png = base64_decode(v.as_str().unwrap());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// A WebDriver command's `value`.
fn send(req: ureq::Request, body: Option<Value>) -> Value {
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => r.into_json::<Value>().unwrap()["value"].clone(),
        Err(ureq::Error::Status(s, r)) => panic!("WebDriver answered {s}: {}", r.into_string().unwrap_or_default()),
        Err(e) => panic!("WebDriver: {e}"),
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let n = data.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (val(c) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..data.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
    assert_eq!(base64_decode("YWJj"), b"abc");
    assert_eq!(base64_decode("YQ=="), b"a");
}

#[test]
fn dashboard_in_a_real_browser() {
    let required = std::env::var("GLASSBOX_BROWSER_TEST").is_ok_and(|v| v == "1");
    let (Some(chromium), Some(chromedriver)) = (find("CHROMIUM", "/usr/bin/chromium"), find("CHROMEDRIVER", "/usr/bin/chromedriver")) else {
        assert!(!required, "GLASSBOX_BROWSER_TEST=1 but chromium or chromedriver is missing (apt-get install chromium chromium-driver)");
        eprintln!("skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)");
        return;
    };
    let model = std::env::var("GLASSBOX_BROWSER_MODEL").unwrap_or_else(|_| fixtures().join("tiny-llama").to_str().unwrap().to_string());
    let shots = std::env::var("GLASSBOX_SCREENSHOT_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&shots).unwrap();
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);

    let server = Server::start(&model, &[]);
    let driver = Driver::start(&chromedriver);
    let s = Session::new(&driver, &chromium, &profile);
    s.post("/url", json!({ "url": format!("{}/", server.url) }));
    let info = s.wait_for("the model's description", "const t = document.getElementById('model-info').textContent; return t.includes('layers') ? t : null;", 30);
    eprintln!("page: {info}");

    let prompt = "When Mary and John went to the store, John gave a drink to";
    s.type_into("#prompt", prompt);
    s.type_into("#correct", " Mary");
    s.type_into("#incorrect", " John");
    s.click("#submit");
    s.wait_for("the analysis", "return document.body.dataset.ready === '1' ? true : null;", 300);

    // The heatmap: one cell per head, with the API's figures.
    let (_, api_info) = common::get(&format!("{}/api/info", server.url));
    let n_heads = api_info["n_layers"].as_u64().unwrap() * api_info["n_heads"].as_u64().unwrap();
    s.click("#tabs button[data-tab='heatmap']");
    let cells = s.js("return [...document.querySelectorAll('#heatmap-plot rect.cell[data-head]')].map(c => [Number(c.dataset.layer), Number(c.dataset.head), Number(c.dataset.value)]);", json!([]));
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len() as u64, n_heads, "one heatmap cell per head");
    let body = json!({ "prompt": prompt, "correct": " Mary", "incorrect": " John", "options": { "method": "taylor", "metric": "logit_diff" } }).to_string();
    let (_, attribution) = post(&format!("{}/api/attribution", server.url), &body);
    let attribution = &attribution["result"];
    for c in cells {
        let (l, h, v) = (c[0].as_u64().unwrap() as usize, c[1].as_u64().unwrap() as usize, c[2].as_f64().unwrap());
        let want = attribution["scores"][l][h].as_f64().unwrap();
        assert!((v - want).abs() <= 1e-5 * (1.0 + want.abs()), "L{l}H{h}: {v} against {want}");
    }

    // The circuit tab lists the analysis' circuit.
    s.click("#tabs button[data-tab='circuit']");
    let (_, analysis) = post(&format!("{}/api/analyze", server.url), &body);
    let analysis = &analysis["result"];
    let want: Vec<String> = analysis["circuit"].as_array().unwrap().iter().map(|h| format!("L{:02}H{:02}", h[0].as_u64().unwrap(), h[1].as_u64().unwrap())).collect();
    assert!(!want.is_empty());
    let listed = s.js("return [...document.querySelectorAll('#circuit-list li[data-head]')].map(li => li.dataset.head);", json!([]));
    assert_eq!(listed, json!(want), "the circuit tab lists the circuit");
    let visible = s.js("return document.getElementById('tab-circuit').hidden === false && document.querySelectorAll('#circuit-plot svg g.node').length;", json!([]));
    assert_eq!(visible.as_u64(), Some(want.len() as u64 + 1), "graph nodes: the circuit's heads and the logits");
    s.screenshot(&shots.join("dashboard-circuit.png"));

    // Hovering a head in the attention tab shows its pattern.
    s.click("#tabs button[data-tab='attention']");
    let (l, h) = (api_info["n_layers"].as_u64().unwrap() - 1, api_info["n_heads"].as_u64().unwrap() / 2);
    s.hover(&format!("#attention-heatmap rect.cell[data-layer='{l}'][data-head='{h}']"));
    let name = format!("L{l:02}H{h:02}");
    let n_cells = s.wait_for(
        "the hovered head's pattern",
        &format!("const p = document.getElementById('attention-pattern'); return p.dataset.head === 'L{l}H{h}' ? p.querySelectorAll('rect.cell[data-head=\"{name}\"]').length : null;"),
        60,
    );
    let (_, tokens) = post(&format!("{}/api/run", server.url), &json!({ "prompt": prompt, "options": { "top_k": 1 } }).to_string());
    let n_tokens = tokens["result"]["tokens"].as_array().unwrap().len() as u64;
    assert_eq!(n_cells.as_u64(), Some(n_tokens * n_tokens), "one cell per query × key");
    s.screenshot(&shots.join("dashboard-attention.png"));

    // The other tabs load and draw.
    for (tab, plot) in [("lens", "lens-plot"), ("patching", "patching-plot"), ("edges", "edges-plot"), ("tokens", "tokens-plot"), ("composition", "composition-plot")] {
        s.click(&format!("#tabs button[data-tab='{tab}']"));
        s.wait_for(tab, &format!("return document.querySelector('#{plot} svg, #{plot}:not(:empty)') ? true : null;"), 120);
    }
    s.click("#tabs button[data-tab='faithfulness']");
    let rows = s.js("return document.querySelectorAll('#faithfulness-table tr').length;", json!([]));
    assert!(rows.as_u64().unwrap() >= 5);

    // Editing the circuit: one head removed, re-scored; the figures equal the API's.
    s.click("#tabs button[data-tab='circuit']");
    let edited: Vec<String> = want.iter().skip(1).cloned().collect();
    let edited = if edited.is_empty() { vec!["L00H00".to_string()] } else { edited };
    s.type_into("#circuit-edit", &edited.join(" "));
    s.click("#rescore");
    s.wait_for("the re-scored circuit", &format!("return document.body.dataset.rescored === '{}' ? true : null;", edited.len()), 120);
    let shown = s.js("return document.getElementById('circuit-score').textContent;", json!([]));
    let (_, f) = post(&format!("{}/api/faithfulness", server.url), &json!({ "prompt": prompt, "correct": " Mary", "incorrect": " John", "options": { "heads": edited, "metric": "logit_diff" } }).to_string());
    let suff = format!("sufficiency {:.1}%", 100.0 * f["result"]["sufficiency"].as_f64().unwrap());
    assert!(shown.as_str().unwrap().contains(&suff), "{shown} lacks {suff}");

    // Every method from the catalog: a prompt-set run of `analyze` from the generated form.
    s.click("#tabs button[data-tab='methods']");
    let offered = s.js("return [...document.querySelectorAll('#method-pick option')].map(o => o.value);", json!([]));
    for m in ["analyze", "attribution", "patch", "path-patch", "edges", "logit-lens", "token-attribution", "attention", "stability", "composition", "scrub", "faithfulness", "generate", "run"] {
        assert!(offered.as_array().unwrap().iter().any(|o| o == m), "the dashboard offers {m}: {offered}");
    }
    s.js("const p = document.getElementById('method-pick'); p.value = 'analyze'; p.dispatchEvent(new Event('change'));", json!([]));
    let fields = s.js("return [...document.querySelectorAll('#method-form [data-field]')].map(e => e.dataset.field);", json!([]));
    assert!(fields.as_array().unwrap().iter().any(|f| f == "n_boot"), "the form comes from the options' schema: {fields}");
    s.click("#use-task");
    s.type_into("#task-n", "4");
    s.click("#method-run");
    s.wait_for("the prompt-set analysis", "return document.body.dataset.methodDone === 'analyze' ? true : null;", 300);
    let text = s.js("return document.querySelector('#method-output pre.report').textContent;", json!([]));
    assert!(text.as_str().unwrap().contains("4 prompts") && text.as_str().unwrap().contains("95% CI"), "{text}");
    s.screenshot(&shots.join("dashboard-methods.png"));
    drop(s);
    let _ = std::fs::remove_dir_all(&profile);
}
