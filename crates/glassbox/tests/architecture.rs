//! ARCHITECTURE.md names only what exists: every path-like name in backticks (a name with a
//! `/` or ending in `.rs`, `.py`, `.md`, `.json`) is a file or folder of the repository, and
//! every module the code map lists under `crates/glassbox/src` is one.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file and folder below `dir`, as paths relative to the repository root with `/`.
fn tree(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name == ".git" || name.starts_with(".venv") || name == "target" || name == "__pycache__" {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        if p.is_dir() {
            out.push(format!("{rel}/"));
            tree(root, &p, out);
        } else {
            out.push(rel);
        }
    }
}

/// The backticked names of `text` that look like paths.
fn path_names(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| !t.contains(' ') && !t.contains('*') && !t.contains("::") && !t.contains('{') && !t.starts_with('/'))
        .filter(|t| t.contains('/') || [".rs", ".py", ".md", ".json"].iter().any(|x| t.ends_with(x)))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_name_in_architecture_md_exists() {
    let root = repo().canonicalize().unwrap();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md at the repository root");
    let mut all = Vec::new();
    tree(&root, &root, &mut all);
    let names = path_names(&text);
    assert!(names.len() > 40, "found only {} path names in ARCHITECTURE.md", names.len());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let n = n.trim_start_matches("./");
            !all.iter().any(|p| p == n || p.ends_with(&format!("/{n}")) || p.trim_end_matches('/') == n || p.trim_end_matches('/').ends_with(&format!("/{}", n.trim_end_matches('/'))))
        })
        .collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md names what does not exist: {missing:?}");
}

#[test]
fn every_library_module_is_in_the_code_map() {
    let root = repo().canonicalize().unwrap();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let src = root.join("crates/glassbox/src");
    let mut all = Vec::new();
    tree(&src, &src, &mut all);
    let named = path_names(&text);
    // A module is named by its file (`ops.rs`), its folder (`fused/`), or a path ending in either.
    let unnamed: Vec<&String> = all
        .iter()
        .filter(|p| p.ends_with(".rs") && *p != "lib.rs" && !p.ends_with("/mod.rs"))
        .filter(|p| {
            let file = p.rsplit('/').next().unwrap();
            let folder = p.rsplit_once('/').map(|(d, _)| format!("{}/", d.rsplit('/').next().unwrap()));
            let stem = file.trim_end_matches(".rs");
            !named.iter().any(|n| n.ends_with(file) || folder.as_ref().is_some_and(|f| n.ends_with(f.as_str())))
                && !text.contains(&format!("`{stem}`"))
        })
        .collect();
    assert!(unnamed.is_empty(), "modules missing from ARCHITECTURE.md's code map: {unnamed:?}");
}
