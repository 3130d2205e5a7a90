//! `glassbox serve` over real HTTP on loopback: the API returns the CLI's `--json` results,
//! bad requests get 4xx answers with a message, a full queue gets 503, and the server goes on
//! serving after each.

mod common;

use std::time::{Duration, Instant};

use common::{call, cli_json, fixtures, get, post, same_envelope, Server};
use serde_json::{json, Value};

const PROMPT: &str = "When Mary and John went to the store, John gave a drink to";

fn model() -> String {
    fixtures().join("tiny-llama").to_str().unwrap().to_string()
}

fn body(extra: Value) -> String {
    let mut b = json!({ "prompt": PROMPT, "correct": " Mary", "incorrect": " John" });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

#[test]
fn the_api_returns_the_cli_json_results() {
    let m = model();
    let server = Server::start(&m, &[]);
    let (s, info) = get(&format!("{}/api/info", server.url));
    assert_eq!(s, 200);
    assert_eq!((info["n_layers"].as_u64(), info["n_heads"].as_u64()), (Some(2), Some(4)));

    let base = ["--model", m.as_str(), "--prompt", PROMPT, "--correct", " Mary", "--incorrect", " John", "--json"];
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("attribution", json!({}), vec!["attribution"]),
        ("attribution", json!({"options": {"method": "integrated_gradients", "n_steps": 7, "component": "mlp"}}), vec!["attribution", "--method", "ig", "--n-steps", "7", "--component", "mlp"]),
        ("analyze", json!({}), vec!["analyze"]),
        ("patch", json!({"options": {"metric": "logprob"}}), vec!["patch", "--metric", "logprob"]),
        ("logit-lens", json!({}), vec!["logit-lens"]),
        ("edges", json!({"options": {"top_k": 5}}), vec!["edges", "--top-k", "5"]),
        ("token-attribution", json!({}), vec!["token-attribution"]),
        ("path-patch", json!({"options": {"receiver": "L1H2.q"}}), vec!["path-patch", "--receiver", "L1H2.q"]),
        ("stability", json!({"options": {"n_corruptions": 5}}), vec!["stability", "--n-corruptions", "5"]),
    ];
    for (command, extra, args) in cases {
        let (s, got) = post(&format!("{}/api/{command}", server.url), &body(extra.clone()));
        assert_eq!(s, 200, "{command} {extra}: {got}");
        let mut cli_args = args.clone();
        cli_args.extend(base);
        let want = cli_json(&cli_args);
        same_envelope(&got, &want, command);
    }
    let (s, got) = post(&format!("{}/api/attention", server.url), &json!({"prompt": PROMPT, "options": {"heads": ["L1H2"]}}).to_string());
    assert_eq!(s, 200, "{got}");
    same_envelope(&got, &cli_json(&["attention", "--model", &m, "--prompt", PROMPT, "--head", "L1H2", "--json"]), "attention");
    let (s, got) = post(&format!("{}/api/composition", server.url), &json!({"options": {"heads": ["L0H1", "L1H2"]}}).to_string());
    assert_eq!(s, 200, "{got}");
    same_envelope(&got, &cli_json(&["composition", "--model", &m, "--head", "L0H1", "--head", "L1H2", "--json"]), "composition");
    let (s, got) = post(&format!("{}/api/scrub", server.url), &json!({"task": "ioi", "n": 8, "options": {"hypothesis": ["L1H2=io"]}}).to_string());
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["result"]["n"], 8, "{got}");
    same_envelope(&got, &cli_json(&["scrub", "--model", &m, "--hypothesis", "L1H2=io", "--n", "8", "--json"]), "scrub");

    // The plot endpoint draws a result as `--plot` does.
    let (_, attribution) = post(&format!("{}/api/attribution", server.url), &body(json!({})));
    let attribution = attribution["result"].clone();
    let (s, ctype, svg) = call(ureq::post(&format!("{}/api/plot/attribution", server.url)), Some(&json!({ "result": attribution }).to_string()));
    assert_eq!((s, ctype.as_str()), (200, "image/svg+xml"));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let cells: Vec<_> = doc.descendants().filter(|n| n.attribute("class") == Some("cell")).collect();
    assert_eq!(cells.len(), 8, "one cell per head");
    for c in cells {
        let (l, h): (usize, usize) = (c.attribute("data-layer").unwrap().parse().unwrap(), c.attribute("data-head").unwrap().parse().unwrap());
        let v: f64 = c.attribute("data-value").unwrap().parse().unwrap();
        let want = attribution["scores"][l][h].as_f64().unwrap();
        assert!((v - want).abs() <= 1e-5 * (1.0 + want.abs()), "L{l}H{h}: {v} against {want}");
    }
}

#[test]
fn bad_requests_get_messages_and_the_server_goes_on() {
    let mut server = Server::start(&model(), &["--max-prompt-chars", "500"]);
    let base = server.url.clone();
    let u = |p: &str| format!("{base}{p}");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/api/analyze", "{\"prompt\": \"When".into(), 400, "not valid JSON"),
        ("/api/analyze", "[1, 2, 3]".into(), 400, "not valid JSON"),
        ("/api/analyze", "".into(), 400, "not valid JSON"),
        ("/api/analyze", body(json!({"prompt": "x".repeat(501)})), 413, "501 characters"),
        ("/api/analyze", body(json!({"corrupted": "é".repeat(600)})), 413, "at most 500"),
        ("/api/analyze", format!("{{\"prompt\": \"{}\"}}", "a ".repeat(40_000)), 413, "at most 64 KiB"),
        ("/api/analyze", body(json!({"file": "/etc/passwd"})), 400, "unknown field `file`"),
        ("/api/analyze", body(json!({"correct": " Mary and"})), 400, "one token"),
        ("/api/analyze", body(json!({"prompt": ""})), 400, "empty"),
        ("/api/analyze", body(json!({"incorrect": " Mary"})), 400, "same"),
        ("/api/analyze", json!({"prompt": PROMPT}).to_string(), 400, "needs `correct`"),
        ("/api/analyze", body(json!({"options": {"target": 7.0}})), 400, "target"),
        ("/api/analyze", body(json!({"options": {"method": "fast"}})), 400, "options of `analyze`"),
        ("/api/analyze", body(json!({"options": {"methdo": "taylor"}})), 400, "no option `methdo`"),
        ("/api/attribution", body(json!({"options": {"method": "integrated_gradients", "n_steps": 100000000}})), 400, "steps"),
        ("/api/stability", body(json!({"options": {"n_corruptions": 1_000_000_000}})), 400, "corruptions"),
        ("/api/attention", json!({"prompt": PROMPT, "options": {"heads": ["L7H0"]}}).to_string(), 400, "out of range"),
        ("/api/composition", json!({"options": {"heads": []}}).to_string(), 400, "needs `heads`"),
        ("/api/run", json!({"prompt": PROMPT, "options": {"top_k": 0}}).to_string(), 400, "top_k is 0"),
        ("/api/scrub", json!({"top_k": 8}).to_string(), 400, "unknown field `top_k`"),
        ("/api/generate", json!({"prompt": PROMPT, "options": {"steer": "blocks.1.hook_resid_pre", "steer_vector": "/etc/passwd"}}).to_string(), 400, "names a file"),
        ("/api/evaluate", json!({"prompts": "/etc/passwd"}).to_string(), 400, "names a file"),
        ("/api/evaluate", json!({"task": "ioi", "n": 2, "options": {"ground_truth": "/etc/passwd"}}).to_string(), 400, "names a file"),
        ("/api/evaluate", json!({"task": "ioi", "n": 2, "options": {"method": "file", "scores_file": "/etc/passwd"}}).to_string(), 400, "names a file"),
        ("/api/evaluate", json!({"task": "ioi", "n": 2, "options": {"mib_out": "/tmp/x.json"}}).to_string(), 400, "names a file"),
        ("/api/train", "{}".into(), 404, "no method"),
        ("/api/plot/analyze", json!({"result": {"circuit": 3}}).to_string(), 400, "not a `analyze` result"),
        ("/api/plot/sankey", json!({"result": {}}).to_string(), 404, "no method"),
    ];
    for (path, b, status, needle) in cases {
        let (s, v) = post(&u(path), &b);
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{path}: no message in {v}"));
        assert_eq!(s, status, "{path} {}: {msg}", &b[..b.len().min(120)]);
        assert!(msg.contains(needle), "{path}: `{msg}` lacks `{needle}`");
        assert!(server.alive());
    }
    // A body over the limit is refused with its size.
    let (s, v) = post(&u("/api/analyze"), &" ".repeat(200_000));
    assert_eq!(s, 413, "{v}");
    let (s, v) = get(&u("/no/such/page"));
    assert_eq!(s, 404, "{v}");
    // Another site's name for this address (DNS rebinding) is refused.
    let (s, _, text) = call(ureq::get(&u("/api/info")).set("Host", "attacker.example:80"), None);
    assert_eq!(s, 421, "{text}");
    // And the server still answers.
    let (s, v) = post(&u("/api/analyze"), &body(json!({})));
    assert_eq!(s, 200, "{v}");
    assert!(v["result"]["circuit"].is_array());
}

#[test]
fn a_full_queue_gets_503_and_the_queue_drains() {
    let server = Server::start(&model(), &["--max-queue", "1"]);
    let url = server.url.clone();
    // A long prompt and many corruptions: long enough to catch it running.
    let long = format!("{PROMPT} {}", "When Mary and John went to the store, John gave a drink to Mary. ".repeat(4));
    let slow = json!({ "prompt": long, "correct": " Mary", "incorrect": " John", "options": {"n_corruptions": 1000} }).to_string();
    let first = {
        let (u, b) = (url.clone(), slow.clone());
        std::thread::spawn(move || post(&format!("{u}/api/stability"), &b))
    };
    let wait_for = |cond: &dyn Fn(&Value) -> bool| {
        let t = Instant::now();
        loop {
            let (_, st) = get(&format!("{url}/api/status"));
            if cond(&st) {
                return st;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "status never became as expected: {st}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_for(&|s| s["running"]["command"] == "stability");
    let second = {
        let (u, b) = (url.clone(), slow.clone());
        std::thread::spawn(move || post(&format!("{u}/api/stability"), &b))
    };
    let st = wait_for(&|s| s["queued"] == 1);
    assert_eq!(st["running"]["command"], "stability", "{st}");
    // One running, one waiting: the third is turned away at once.
    let (s, v) = post(&format!("{url}/api/analyze"), &body(json!({})));
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("busy"), "{v}");
    // The status and the page still answer while it runs.
    let (s, _, page) = call(ureq::get(&format!("{url}/")), None);
    assert!(s == 200 && page.contains("glassbox"));
    let (a, b) = (first.join().unwrap(), second.join().unwrap());
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
    assert_eq!(a.1["result"], b.1["result"], "the same request gives the same result");
    assert_eq!(a.1["result"]["n_corruptions"], 1000);
    let st = wait_for(&|s| s["running"].is_null() && s["queued"] == 0);
    assert_eq!(st["completed"], 2, "{st}");
    let (s, v) = post(&format!("{url}/api/analyze"), &body(json!({})));
    assert_eq!(s, 200, "{v}");
}
