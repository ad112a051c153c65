//! A home that someone else could change is refused: the real `scout up`
//! will not start on a home that is group/world-writable or owned by
//! another user (nor with such a file inside), `scout doctor` fails with
//! the same fix, a secret file readable by others is tightened with a
//! warning, and every file a broker creates is owner-only.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use common::{BrokerProcess, Run, Sandbox, WAIT_BOUND};

/// A user id that is not ours: `nobody` on Linux.
const OTHER_UID: u32 = 65534;

/// Runs `scout up` that is expected to refuse to start, bounded: a broker
/// that starts after all is killed and fails the test.
fn up_refused(sandbox: &Sandbox) -> Run {
    let mut child = sandbox
        .scout()
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scout up");
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Run::from(child.wait_with_output().expect("output"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "scout up did not refuse the home; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Gives `path` to another user, or says why this run cannot (not root).
fn chown_to_other(path: &Path) -> bool {
    match std::os::unix::fs::chown(path, Some(OTHER_UID), None) {
        Ok(()) => true,
        Err(err) => {
            println!(
                "skipped: cannot chown {} to uid {OTHER_UID} ({err}); run the tests as root for this case",
                path.display()
            );
            false
        }
    }
}

fn assert_refused(run: &Run, path: &Path, fix: &str) {
    assert_eq!(
        run.code, 2,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("UNSAFE_HOME"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&path.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(fix), "{}", run.stderr);
}

#[test]
fn a_world_writable_home_is_refused_and_doctor_says_how_to_fix_it() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let home = sandbox.home();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();

    let run = up_refused(&sandbox);
    assert_refused(&run, &home, &format!("chmod 700 {}", home.display()));
    assert!(run.stderr.contains("mode 777"), "{}", run.stderr);

    let doctor = sandbox.run(&["doctor"]);
    assert_eq!(doctor.code, 1, "{}", doctor.stdout);
    assert!(doctor.stdout.contains("UNSAFE_HOME"), "{}", doctor.stdout);
    assert!(
        doctor
            .stdout
            .contains(&format!("fix: chmod 700 {}", home.display())),
        "{}",
        doctor.stdout
    );

    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    let doctor = sandbox.run(&["--json", "doctor"]).json();
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "home-owner")
        .cloned()
        .unwrap();
    assert_eq!(check["status"], "ok", "{check}");
}

#[test]
fn a_group_writable_file_in_the_home_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let agents = sandbox.home().join("relay-agents.json");
    fs::set_permissions(&agents, fs::Permissions::from_mode(0o664)).unwrap();
    let run = up_refused(&sandbox);
    assert_refused(&run, &agents, &format!("chmod 600 {}", agents.display()));
}

#[test]
fn a_home_owned_by_another_user_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let home = sandbox.home();
    if !chown_to_other(&home) {
        return;
    }
    let run = up_refused(&sandbox);
    assert_refused(&run, &home, "chown -h ");
    assert!(
        run.stderr.contains(&format!("owned by uid {OTHER_UID}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_file_owned_by_another_user_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let token = sandbox.home().join("token");
    if !chown_to_other(&token) {
        return;
    }
    let run = up_refused(&sandbox);
    assert_refused(&run, &token, &token.display().to_string());
    assert!(run.stderr.contains("chown -h"), "{}", run.stderr);
}

#[test]
fn a_link_to_a_file_of_another_user_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let home = sandbox.home();
    let planted = sandbox.path().join("planted-settings.json");
    fs::copy(home.join("settings.json"), &planted).unwrap();
    if !chown_to_other(&planted) {
        return;
    }
    fs::remove_file(home.join("settings.json")).unwrap();
    std::os::unix::fs::symlink(&planted, home.join("settings.json")).unwrap();
    let run = up_refused(&sandbox);
    assert_refused(&run, &home.join("settings.json"), "chown -h");
}

#[test]
fn a_token_readable_by_others_is_tightened_with_a_warning() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let token = sandbox.home().join("token");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let mut broker = BrokerProcess::start(&sandbox);
    assert_eq!(mode(&token), 0o600);
    assert_eq!(broker.stop_with(15), 0);
    let stderr = broker.stderr();
    assert!(
        stderr.contains("a secret file was readable by others") && stderr.contains("token"),
        "{stderr}"
    );
}

/// Every file and directory under `dir`.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(tree(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn every_file_a_broker_creates_is_owner_only() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let mut broker = BrokerProcess::start(&sandbox);
    // Writes through the broker: the mesh and store files, an invite.
    let invite = sandbox.run(&["mesh", "invite"]);
    assert_eq!(invite.code, 0, "{}", invite.stderr);
    let add = sandbox.run(&["agents", "add", "shell", "--command", "bash"]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let home = sandbox.home();
    let files = tree(&home);
    let names: Vec<String> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "settings.json",
        "relay-agents.json",
        "node.key",
        "token",
        "scout.db",
        "scout.db-wal",
        "broker.json",
        "broker.lock",
        "mesh.json",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing in {names:?}"
        );
    }
    let open: Vec<String> = std::iter::once(home.clone())
        .chain(files)
        .filter(|path| mode(path) & 0o077 != 0)
        .map(|path| format!("{} {:o}", path.display(), mode(&path)))
        .collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    assert_eq!(mode(&home), 0o700);
    let uid = fs::metadata(&home).unwrap().uid();
    assert!(
        tree(&home)
            .iter()
            .all(|path| fs::symlink_metadata(path).unwrap().uid() == uid)
    );
    assert_eq!(broker.stop_with(15), 0);
}

#[test]
fn agents_create_files_with_the_users_own_mask() {
    let sandbox = Sandbox::new();
    sandbox.setup("laptop");
    let seen = sandbox.path().join("agent-umask");
    let script = format!(
        "umask > {}; printf 'ready> '; while IFS= read -r line; do echo \"got: $line\"; printf 'ready> '; done",
        seen.display()
    );
    let cwd = sandbox.path().display().to_string();
    let add = sandbox.run(&[
        "agents",
        "add",
        "masked",
        "--cwd",
        &cwd,
        "--prompt-pattern",
        "ready>",
        "--command",
        "bash",
        "-c",
        &script,
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let mut broker = BrokerProcess::start(&sandbox);
    let sent = sandbox.run(&["send", "@masked", "hello", "--wait", "--timeout", "60"]);
    assert_eq!(sent.code, 0, "{}\n{}", sent.stdout, sent.stderr);
    // What this test process's children get, which is what scout got.
    let ours = std::process::Command::new("sh")
        .args(["-c", "umask"])
        .output()
        .unwrap();
    let ours = String::from_utf8_lossy(&ours.stdout).trim().to_owned();
    let agents = fs::read_to_string(&seen).unwrap().trim().to_owned();
    assert_eq!(
        agents, ours,
        "the broker's owner-only mask leaked into its agent"
    );
    assert_eq!(broker.stop_with(15), 0);
}
