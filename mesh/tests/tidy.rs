//! Keeps the mesh core pure: outside the IO shells (`transport/`,
//! `discovery/`), its sources never name an IO crate, the system clock or a
//! random source.

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

/// Folders of the crate that are IO shells around the core, allowed to use
/// tokio, quinn and the network.
const IO_SHELLS: &[&str] = &["transport", "discovery"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() && IO_SHELLS.contains(&name) {
            continue;
        }
        if IO_SHELLS.iter().any(|shell| name == format!("{shell}.rs")) {
            continue;
        }
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
