//! Named crash points for the crash-safety tests.
//!
//! The launch protocol promises that killing the operator at any step neither
//! loses nor duplicates a machine. Timing a SIGKILL from outside cannot hit a
//! given step reliably, so the tests name the step instead: with the cargo
//! feature `failpoints`, `HOSTFORGE_FAILPOINTS=name[,name…]` makes the process
//! abort (no destructors, no graceful shutdown: the same as SIGKILL) the first
//! time it reaches that point. Without the feature the macro compiles to nothing.

/// Aborts the process when the named failpoint is enabled (feature `failpoints`).
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}

/// The environment variable listing enabled failpoints, comma-separated.
pub const FAILPOINTS_ENV: &str = "HOSTFORGE_FAILPOINTS";

/// Aborts if `name` is listed in [`FAILPOINTS_ENV`].
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let enabled = std::env::var(FAILPOINTS_ENV).unwrap_or_default();
    if enabled.split(',').any(|n| n.trim() == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
