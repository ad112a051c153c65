//! The battery's bookkeeping: every case has a name and an outcome, a case
//! that panics is a failed case (not an aborted battery), and the summary
//! lists what each failed case saw.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

/// What one case concluded.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The broker behaved as the contract says.
    Passed,
    /// It did not; what was seen instead.
    Failed(String),
    /// The case could not run here; why.
    Skipped(String),
}

/// The result of a check: `Err` says what was seen.
pub type Check = Result<(), String>;

/// Every case of the battery, from every thread.
#[derive(Debug, Default)]
pub struct Tally {
    cases: Mutex<Vec<(String, Outcome)>>,
}

impl Tally {
    /// Runs one case; a panic inside it counts as a failure with its message.
    pub fn case(&self, name: impl Into<String>, body: impl FnOnce() -> Check) {
        let name = name.into();
        let outcome = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(seen)) => Outcome::Failed(seen),
            Err(panic) => Outcome::Failed(format!("the case panicked: {}", panic_text(&panic))),
        };
        self.record(name, outcome);
    }

    /// Records a case that cannot run in this environment.
    pub fn skip(&self, name: impl Into<String>, reason: impl Into<String>) {
        self.record(name.into(), Outcome::Skipped(reason.into()));
    }

    /// Records a finished case.
    pub fn record(&self, name: String, outcome: Outcome) {
        self.cases
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((name, outcome));
    }

    /// Runs a group of cases; a panic outside any case (a broker that did
    /// not start, say) is recorded as one failed case named after the group.
    pub fn group(&self, name: &str, body: impl FnOnce(&Tally)) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(self))) {
            self.record(
                format!("{name}: setup"),
                Outcome::Failed(format!("the group stopped: {}", panic_text(&panic))),
            );
        }
    }

    /// Prints every failed and skipped case, then `N passed, N failed` on
    /// a line of its own; returns the number of cases and of failures.
    pub fn report(&self) -> (usize, usize) {
        let cases = self
            .cases
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut n_passed = 0;
        let mut n_failed = 0;
        let mut n_skipped = 0;
        for (name, outcome) in cases.iter() {
            match outcome {
                Outcome::Passed => n_passed += 1,
                Outcome::Failed(seen) => {
                    n_failed += 1;
                    println!("FAILED {name}: {}", shorten(seen));
                }
                Outcome::Skipped(reason) => {
                    n_skipped += 1;
                    println!("SKIPPED {name}: {reason}");
                }
            }
        }
        if n_skipped > 0 {
            println!("{n_skipped} skipped");
        }
        println!("{n_passed} passed, {n_failed} failed");
        (cases.len(), n_failed)
    }
}

/// Largest part of a failure's description printed: a response that echoes
/// a 10 MB body must not flood the log.
const SEEN_CHARS_MAX: usize = 600;

/// `text` cut to [`SEEN_CHARS_MAX`] characters, with control characters
/// escaped so a hostile echo cannot drive the terminal showing the log.
pub fn shorten(text: &str) -> String {
    let mut out = String::new();
    for (idx, ch) in text.chars().enumerate() {
        if idx == SEEN_CHARS_MAX {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// `Err(what)` unless `condition` holds.
pub fn ensure(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition { Ok(()) } else { Err(what()) }
}
