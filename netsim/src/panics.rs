//! Panics seen during a run. A broker task that panics is caught by tokio
//! and the run goes on, so a hook records every panic on the thread that
//! runs the simulation (each run has its own thread), for the `no_panics`
//! check.

use std::cell::RefCell;
use std::sync::Once;

/// Panic messages kept per run at most: the first few say what broke.
pub const PANICS_KEPT_MAX: usize = 16;

thread_local! {
    static SEEN: RefCell<(usize, Vec<String>)> = const { RefCell::new((0, Vec::new())) };
}

/// Installs the recording hook (once per process); the previous hook still
/// prints the panic.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|at| format!(" at {}:{}", at.file(), at.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            SEEN.with(|seen| {
                let mut seen = seen.borrow_mut();
                seen.0 += 1;
                if seen.1.len() < PANICS_KEPT_MAX {
                    seen.1.push(format!("{message}{location}"));
                }
            });
            previous(info);
        }));
    });
}

/// The number of panics on this thread since the last call, and the first
/// messages; resets the record.
pub fn take() -> (usize, Vec<String>) {
    SEEN.with(|seen| std::mem::take(&mut *seen.borrow_mut()))
}
