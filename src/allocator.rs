//! The process's allocator: mimalloc for every binary that links vmnd (the daemon, the tests,
//! the benches), and how it is tuned.
//!
//! Why mimalloc: sled copies a node on each write and frees the old one; under glibc's
//! allocator that churn was 40% of the CPU of a consent fill and fragmented RSS to gigabytes at
//! millions of contacts (see BENCHMARKS.md).
//!
//! Why tuned: mimalloc 3 gives freed memory back to the system only after `purge_delay`, 1 s by
//! default (10 s for whole arenas). The daemon frees as fast as it allocates (every message's
//! PDU, record, job and request, and sled's node copies), so a second's worth of freed pages
//! stayed resident: at 10 ms the peak RSS after a million messages went from 171-174 MiB to
//! 138 MiB, with no more CPU per message that the noise let us see (BENCHMARKS.md, fifth
//! session). An operator's `MIMALLOC_PURGE_DELAY` wins over this.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What [`tune`] did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// `purge_delay` is now [`PURGE_DELAY_MS`] (or already was, from an earlier call).
    Tuned,
    /// `MIMALLOC_PURGE_DELAY` is set: the operator's choice stands.
    LeftToTheEnvironment,
    /// The option did not read as mimalloc 3's default: another mimalloc whose options are
    /// numbered differently. Left alone rather than set a different option by mistake.
    Unrecognised(i64),
    /// Built without the `mimalloc` feature: the system's allocator.
    NotMimalloc,
}

/// How long freed memory stays with the process before mimalloc returns it, in ms.
pub const PURGE_DELAY_MS: i64 = 10;

#[cfg(feature = "mimalloc")]
mod options {
    /// mimalloc 3's `mi_option_purge_delay`, by its place in the C enum (the Rust bindings name
    /// only the older options). [`DEFAULT_MS`] is how it is recognised before it is changed.
    pub const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// Its default in mimalloc 3.
    pub const DEFAULT_MS: i64 = 1000;

    // `c_long` is `i64` here, not on every target.
    #[allow(clippy::useless_conversion)]
    pub fn get() -> i64 {
        // SAFETY: reads one entry of mimalloc's option table; any index below
        // `_mi_option_last` is valid, and this one is.
        i64::from(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) })
    }

    pub fn set(ms: i64) {
        let ms = std::ffi::c_long::try_from(ms).unwrap_or(std::ffi::c_long::MAX);
        // SAFETY: as `get`; mimalloc reads the value at each purge decision, so setting it
        // while allocating is what it is made for.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms) }
    }
}

/// Shortens mimalloc's purge delay to [`PURGE_DELAY_MS`] unless the environment sets it.
/// Idempotent; the daemon calls it at start.
pub fn tune() -> Tuning {
    #[cfg(feature = "mimalloc")]
    {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return Tuning::LeftToTheEnvironment;
        }
        match options::get() {
            PURGE_DELAY_MS => Tuning::Tuned,
            options::DEFAULT_MS => {
                options::set(PURGE_DELAY_MS);
                Tuning::Tuned
            }
            other => Tuning::Unrecognised(other),
        }
    }
    #[cfg(not(feature = "mimalloc"))]
    Tuning::NotMimalloc
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    /// Each test runs in a process of its own (nextest), so this one sees mimalloc's defaults.
    #[test]
    fn the_purge_delay_is_recognised_by_its_default_and_shortened_once() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            assert_eq!(tune(), Tuning::LeftToTheEnvironment);
            return;
        }
        let before = options::get();
        assert!(
            before == options::DEFAULT_MS || before == PURGE_DELAY_MS,
            "option {} reads {before}: not mimalloc 3's purge_delay",
            options::PURGE_DELAY
        );
        assert_eq!(tune(), Tuning::Tuned);
        assert_eq!(options::get(), PURGE_DELAY_MS);
        assert_eq!(tune(), Tuning::Tuned, "a second call changes nothing");
        assert_eq!(options::get(), PURGE_DELAY_MS);
    }
}
