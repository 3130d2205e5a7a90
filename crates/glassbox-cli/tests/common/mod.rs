//! Shared by the CLI's tests: a `glassbox serve` process (started on a free loopback port, killed
//! on drop), HTTP calls to it, the CLI's `--json` output, and the comparison of two envelopes.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
}

impl Server {
    /// Starts `glassbox serve --model MODEL --port 0 EXTRA...` and waits for its address.
    pub fn start(model: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["serve", "--model", model, "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting glassbox serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let start = line.find("http://").unwrap_or_else(|| panic!("glassbox serve did not print its address: {line:?}"));
        let url = line[start..].split_whitespace().next().unwrap().trim_end_matches('/').to_string();
        Server { child, url }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and the body of a request (ureq reports 4xx/5xx as errors; here they are answers).
pub fn call(req: ureq::Request, body: Option<&str>) -> (u16, String, String) {
    let r = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let ctype = resp.content_type().to_string();
    (status, ctype, resp.into_string().unwrap())
}

pub fn post(url: &str, body: &str) -> (u16, Value) {
    let (s, _, text) = call(ureq::post(url), Some(body));
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

pub fn get(url: &str) -> (u16, Value) {
    let (s, _, text) = call(ureq::get(url), None);
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// `glassbox ARGS...`'s standard output as JSON; the command must succeed.
pub fn cli_json<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox")).args(args).output().unwrap();
    assert!(out.status.success(), "glassbox {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The parts of two envelopes that must agree (all but the seconds).
pub fn same_envelope(got: &Value, want: &Value, what: &str) {
    for k in ["method", "glassbox_version", "model", "input", "metric", "options", "warnings"] {
        assert_eq!(got[k], want[k], "{what}: `{k}` differs");
    }
    assert_close(&got["result"], &want["result"], what);
}

/// Every number in `a` within 1e-5 (relative) of `b`'s, every other value equal.
pub fn assert_close(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{path}: {x} against {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{path}: keys");
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}
