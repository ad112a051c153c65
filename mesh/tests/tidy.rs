//! Keeps the mesh core pure: its manifest depends on no IO crate, and its
//! sources never name one, nor the system clock or a random source. The IO
//! shell (transport, discovery) is the `scout-net` crate.

use std::fs;
use std::path::Path;

/// Paths and crates the pure core must not touch.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "quinn",
    "rustls",
    "rusqlite",
    "mdns_sd",
    "portable_pty",
    "std::net",
    "std::fs",
    "std::process",
    "std::thread",
    "SystemTime",
    "Instant::now",
    "rand::",
    "thread_rng",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_sources_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(!files.is_empty());
    let mut offences = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read");
        for (line_idx, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                if code.contains(word) {
                    offences.push(format!("{}:{}: `{word}`", file.display(), line_idx + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the mesh core must stay pure:\n{}",
        offences.join("\n")
    );
}

/// Crates that do IO, which the core's `[dependencies]` must not list.
const IO_CRATES: &[&str] = &[
    "tokio",
    "quinn",
    "rustls",
    "rusqlite",
    "mdns-sd",
    "if-addrs",
    "portable-pty",
    "rand",
];

#[test]
fn core_manifest_names_no_io_crate() {
    let manifest = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("read Cargo.toml");
    let mut section = "";
    let mut offences = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[dependencies]" {
            continue;
        }
        let name = line.split(['.', ' ', '=']).next().unwrap_or_default();
        if IO_CRATES.contains(&name) {
            offences.push(name.to_owned());
        }
    }
    assert!(
        offences.is_empty(),
        "the mesh core must not depend on IO crates: {offences:?}"
    );
}
