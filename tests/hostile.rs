//! The hostile-input battery: real brokers in temporary homes, attacked
//! through every surface they have (HTTP routes, the mesh's UDP port,
//! invites, the home directory, config files, the command line, project
//! manifests) with inputs generated from tables: routes × token variants,
//! fields × hostile values, files × malformed contents. Every input must
//! get its typed refusal, and the broker must keep serving.
//!
//! Each case is counted; the run prints every failed case with what was
//! seen, then `N passed, N failed`. The test fails if any case failed.
//! Independent groups run on their own brokers in parallel threads, so the
//! whole battery stays within a couple of minutes.

mod common;
#[path = "hostile/home_cases.rs"]
mod home_cases;
#[path = "hostile/http_cases.rs"]
mod http_cases;
#[path = "hostile/mesh_cases.rs"]
mod mesh_cases;
#[path = "hostile/procs.rs"]
mod procs;
#[path = "hostile/raw_http.rs"]
mod raw_http;
#[path = "hostile/tally.rs"]
mod tally;
#[path = "hostile/trust_cases.rs"]
mod trust_cases;

use http_cases::Target;
use tally::Tally;

/// The least number of cases the tables must produce: a guard against a
/// table silently shrinking.
const CASES_MIN: usize = 350;

#[test]
fn hostile_input_battery() {
    let open_files_limit = raise_open_files_limit();
    let tally = Tally::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            tally.group("http", |tally| {
                let target = Target::start("hostile");
                http_cases::tokens(tally, &target);
                http_cases::scopes(tally, &target);
                http_cases::hosts_and_origins(tally, &target);
                http_cases::bodies(tally, &target);
                http_cases::names(tally, &target);
                home_cases::cli_names(tally, &target);
            });
        });
        scope.spawn(|| {
            tally.group("prompts", |tally| {
                let target = Target::start("prompts");
                http_cases::prompts(tally, &target);
            });
        });
        scope.spawn(|| {
            tally.group("flood", |tally| {
                let target = Target::start("flood");
                http_cases::flood(tally, &target, open_files_limit);
            });
        });
        scope.spawn(|| tally.group("mesh", mesh_cases::all));
        scope.spawn(|| {
            tally.group("homes", |tally| {
                home_cases::impostor(tally);
                home_cases::unsafe_homes(tally);
                home_cases::configs(tally);
            });
        });
        scope.spawn(|| tally.group("revocation", trust_cases::revoked_inviter));
        scope.spawn(|| tally.group("manifests", trust_cases::manifests));
    });
    let (n_cases, n_failed) = tally.report();
    assert!(
        n_cases >= CASES_MIN,
        "only {n_cases} cases ran; the tables must produce at least {CASES_MIN}"
    );
    assert_eq!(
        n_failed, 0,
        "{n_failed} hostile-input cases failed (listed above)"
    );
}

/// Raises this process's soft limit on open files to its hard limit, so the
/// flood of connections is limited by the broker (which inherits the
/// limit), not by the test. Returns the soft limit in force afterwards (0
/// when it cannot be read).
#[allow(unsafe_code)]
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    let in_force = if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        raised.rlim_cur
    } else {
        limit.rlim_cur
    };
    println!(
        "open files limit: {in_force} (hard limit {})",
        limit.rlim_max
    );
    in_force
}
