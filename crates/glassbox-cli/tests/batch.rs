//! `glassbox batch` as a process: a run interrupted by SIGINT, and one killed by SIGKILL,
//! then resumed, gives the rows of an uninterrupted run, each id once; bad lines are reported
//! by number on stderr and the rest run; `batch prompts` and `batch summarize`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixtures;
use glassbox::batch::{parts_dir, table};
use serde_json::{Map, Value};

fn glassbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
}

fn model() -> String {
    fixtures().join("tiny-llama").to_str().unwrap().to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glassbox-cli-batch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows(path: &Path) -> BTreeMap<String, Map<String, Value>> {
    let (rows, _) = table::read_file(path).unwrap();
    let n = rows.len();
    let by_id: BTreeMap<String, Map<String, Value>> = rows.into_iter().map(|r| (r["id"].as_str().unwrap().to_string(), r)).collect();
    assert_eq!(by_id.len(), n, "an id is in {} twice", path.display());
    by_id
}

/// The arguments of a run of `analyze` over 256 generated IOI prompts into `out`.
fn run_args(out: &Path) -> Vec<String> {
    let m = model();
    ["batch", "--model", &m, "--task", "ioi", "--n", "256", "--method", "analyze", "--batch-size", "1", "--row-group", "2", "--out", out.to_str().unwrap()].map(String::from).to_vec()
}

fn check(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the run, waits until it has written `parts` parts, sends `signal`, and waits for it.
fn interrupt(out: &Path, signal: libc::c_int, parts: usize) -> Output {
    let child = glassbox().args(run_args(out)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let dir = parts_dir(out);
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(&dir).map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))).count()).unwrap_or(0);
        if n >= parts {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no parts written");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been waited for (so not reused).
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0);
    child.wait_with_output().unwrap()
}

#[test]
fn interrupted_runs_resume_to_the_uninterrupted_rows() {
    let dir = tmp("resume");
    let whole = dir.join("whole.parquet");
    check(&glassbox().args(run_args(&whole)).output().unwrap());
    let want = rows(&whole);
    assert_eq!(want.len(), 256);
    assert!(!parts_dir(&whole).exists());

    // SIGINT: the run stops at the next prompt, joins its parts into a valid file, says how to go on.
    let int = dir.join("int.parquet");
    let out = interrupt(&int, libc::SIGINT, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run finished before the signal: {stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let partial = rows(&int);
    assert!(!partial.is_empty() && partial.len() < 256, "{} rows", partial.len());
    for (id, r) in &partial {
        assert_eq!(r, &want[id], "{id}");
    }
    let mut resume = run_args(&int);
    resume.push("--resume".into());
    check(&glassbox().args(&resume).output().unwrap());
    assert_eq!(rows(&int), want);
    assert!(!parts_dir(&int).exists());

    // SIGKILL: no chance to join; the parts written so far are whole, and --resume uses them.
    let kill = dir.join("kill.parquet");
    let out = interrupt(&kill, libc::SIGKILL, 3);
    assert!(!out.status.success());
    assert!(parts_dir(&kill).exists());
    let mut resume = run_args(&kill);
    resume.push("--resume".into());
    let out = glassbox().args(&resume).output().unwrap();
    check(&out);
    assert_eq!(rows(&kill), want);
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("kill.parquet.json")).unwrap()).unwrap();
    assert!(report["skipped_done"].as_u64().unwrap() >= 6, "{report}");
}

#[test]
fn bad_lines_are_reported_and_the_rest_complete() {
    let dir = tmp("bad");
    let input = dir.join("in.jsonl");
    let out = dir.join("r.parquet");
    let good = |id: &str| format!(r#"{{"id": "{id}", "prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John", "group": "g"}}"#);
    let long = "word ".repeat(5000);
    let lines = [
        good("a"),
        "{oops".to_string(),
        r#"{"id": "b", "prompt": "When Mary and John went"}"#.to_string(),
        r#"{"id": "c", "prompt": "When Mary and John went", "correct": " Mary and", "incorrect": " John"}"#.to_string(),
        format!(r#"{{"id": "d", "prompt": "Mary John {long}", "correct": " Mary", "incorrect": " John"}}"#),
        good("e"),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let m = model();
    let o = glassbox().args(["batch", "--model", &m, "--input", input.to_str().unwrap(), "--method", "attribution", "--out", out.to_str().unwrap()]).output().unwrap();
    check(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    for needle in ["line 2: not valid JSON", "line 3 (id b): missing field `correct`", "line 4 (id c):", "line 5 (id d):"] {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert_eq!(rows(&out).keys().collect::<Vec<_>>(), vec!["a", "e"]);
    // --strict stops instead.
    let strict = dir.join("s.parquet");
    let o = glassbox().args(["batch", "--model", &m, "--input", input.to_str().unwrap(), "--out", strict.to_str().unwrap(), "--strict"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--strict"));
    // The summary of the two rows, as JSON.
    let o = glassbox().args(["batch", "summarize", out.to_str().unwrap(), "--json"]).output().unwrap();
    check(&o);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["all"]["n"], 2);
    assert_eq!(s["groups"]["g"]["n"], 2);
    assert!(s["all"]["top_cells"]["scores"].as_array().is_some_and(|c| !c.is_empty()), "{s}");
}

#[test]
fn generated_prompts_are_jsonl_the_run_reads() {
    let dir = tmp("prompts");
    let p = dir.join("p.jsonl");
    let m = model();
    check(&glassbox().args(["batch", "prompts", "--model", &m, "--task", "ioi", "--n", "12", "--seed", "4", "--out", p.to_str().unwrap()]).output().unwrap());
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 12);
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        for k in ["id", "prompt", "correct", "incorrect", "corrupted", "group"] {
            assert!(v[k].is_string(), "{k} in {l}");
        }
    }
    let out = dir.join("r.parquet");
    check(&glassbox().args(["batch", "--model", &m, "--input", p.to_str().unwrap(), "--method", "logit-lens", "--out", out.to_str().unwrap()]).output().unwrap());
    assert_eq!(rows(&out).len(), 12);
}

/// `batch summarize` of 32 IOI rows of `analyze` fits one screen; each group and every figure
/// are there when asked for (issue 27).
#[test]
fn the_summary_of_a_prompt_set_fits_one_screen() {
    let dir = tmp("summary");
    let out = dir.join("a.parquet");
    let m = model();
    check(&glassbox().args(["batch", "--model", &m, "--task", "ioi", "--n", "32", "--method", "analyze", "--out", out.to_str().unwrap()]).output().unwrap());
    let text = |extra: &[&str]| -> String {
        let o = glassbox().args(["batch", "summarize", out.to_str().unwrap()]).args(extra).output().unwrap();
        check(&o);
        String::from_utf8(o.stdout).unwrap()
    };
    let short = text(&[]);
    assert!(short.lines().count() <= 60, "{} lines:\n{short}", short.lines().count());
    for needle in ["32 rows of analyze", "faithfulness.sufficiency", "circuit over the set", "--by-group"] {
        assert!(short.contains(needle), "`{needle}` not in:\n{short}");
    }
    let groups = text(&["--by-group"]);
    assert!(groups.contains("\ngroup ") && groups.lines().count() > short.lines().count());
    // Groups too small for an interval show means only.
    assert!(groups.lines().filter(|l| l.starts_with("group ") && l.contains("means only")).all(|l| l.contains("(1 row") || l.contains("(2 rows") || l.contains("(3 rows") || l.contains("(4 rows")), "{groups}");
    let full = text(&["--full"]);
    let heads = 2 * 4;
    assert!(full.lines().filter(|l| l.trim_start().starts_with("attributions.L")).count() >= heads, "{full}");
}
