//! A SIGSEGV sent by another process (`kill -SEGV`, `systemctl kill -s SEGV`) ends
//! the agent with a core dump, as it ends a C daemon, so a supervisor sees a crash
//! and restarts it. Rust's runtime handles SIGSEGV to report stack overflows; for a
//! signal it did not raise by faulting, its handler only restores the default
//! action and returns, and the process would run on. A real fault still reaches
//! that handler.

use std::sync::OnceLock;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The handler installed before ours (Rust's stack-overflow reporter).
static PREVIOUS: OnceLock<SigAction> = OnceLock::new();

extern "C" fn on_sigsegv(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let sent = unsafe { (*info).si_code } <= 0;
    match PREVIOUS.get().map(SigAction::handler) {
        Some(SigHandler::SigAction(previous)) if !sent => previous(signal, info, context),
        Some(SigHandler::Handler(previous)) if !sent => previous(signal),
        _ => {
            // SAFETY: resetting to the default action and raising are async-signal-safe.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
        }
    }
}

/// Installs the handler (once, at start-up, before any other thread).
pub fn die_on_sent_sigsegv() {
    let ours = SigAction::new(
        SigHandler::SigAction(on_sigsegv),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions or the handler it
    // replaced, with the arguments the kernel gave.
    match unsafe { sigaction(Signal::SIGSEGV, &ours) } {
        Ok(previous) => {
            let _ = PREVIOUS.set(previous);
        }
        Err(errno) => tracing::debug!("SIGSEGV handler not installed: {errno}"),
    }
}
