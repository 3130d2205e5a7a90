//! A `glassbox serve` process for the tests: started on a free loopback port, killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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

pub fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let (s, _, text) = call(ureq::post(url), Some(body));
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

pub fn get(url: &str) -> (u16, serde_json::Value) {
    let (s, _, text) = call(ureq::get(url), None);
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}
