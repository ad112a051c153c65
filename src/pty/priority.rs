//! Terminal threads run at a lower scheduling priority than the rest of the
//! broker. Under CPU contention (agents flooding output on a small machine)
//! the threads that read and parse terminals get less CPU, their bounded
//! queues fill, and the flooding programs block on their terminals: the
//! floods slow down instead of the broker's API.
//!
//! This is the one module of the runtime with `unsafe` code: `setpriority`
//! has no safe wrapper in the crates used here.

#![allow(unsafe_code)]

/// Nice value of terminal reader and screen threads (0 is normal, 19 the
/// lowest). At 10 a terminal thread weighs a tenth of a normal one, so the
/// API's workers win under contention; a tenth of a core still parses
/// several MB/s of terminal output, far more than an agent CLI prints.
pub const TERMINAL_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`TERMINAL_THREAD_NICE`]. Best
/// effort: a failure leaves the thread at normal priority.
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        let Ok(tid) = libc::id_t::try_from(nix::unistd::gettid().as_raw()) else {
            return;
        };
        // SAFETY: setpriority takes plain integers and touches no memory of
        // this process; on Linux, PRIO_PROCESS with a thread id changes only
        // that thread's nice value, and raising it needs no privilege.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, TERMINAL_THREAD_NICE) };
    }
}
