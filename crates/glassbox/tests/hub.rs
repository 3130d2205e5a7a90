//! A Hugging Face Hub id resolves to the Hub's local cache when the model is there (everything
//! after the download, tested offline), and fails with a clear message when it is not and the
//! Hub cannot be reached. One test in its own binary: it sets HF_HOME.

mod common;

use common::{fixtures, scratch};
use glassbox::{registry, Model};

#[test]
fn hub_ids_resolve_through_the_hf_cache() {
    let home = scratch("hf-home");
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let repo = home.join("hub").join("models--tiny--llama");
    let snap = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), snap.join(f)).unwrap();
    }
    let path = registry::resolve("tiny/llama", &mut |_| {}).unwrap();
    assert_eq!(path, snap);
    let model = Model::load(&path).unwrap();
    assert_eq!(model.config().n_kv_heads, 2);

    // A refs/main that leads outside the model's snapshots is refused (issue 12).
    let outside = home.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), outside.join(f)).unwrap();
    }
    let evil = home.join("hub").join("models--evil--model");
    std::fs::create_dir_all(evil.join("snapshots")).unwrap();
    std::fs::create_dir_all(evil.join("refs")).unwrap();
    std::fs::write(evil.join("refs").join("main"), "../../../outside").unwrap();
    let e = registry::resolve("evil/model", &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("points outside"), "{e}");

    // Not cached, and no Hub here: an error that says what to do, not a panic.
    let e = registry::resolve("nobody/nothing-here", &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("nobody/nothing-here"), "{e}");
    assert!(e.to_string().contains("pass its path"), "{e}");
}
