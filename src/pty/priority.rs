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
/// lowest). At 5 a terminal thread weighs about a third of a normal one:
/// the API's workers win under contention, and terminals still get a fair
/// share when other programs (a build) keep the machine busy.
pub const TERMINAL_THREAD_NICE: i32 = 5;

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
