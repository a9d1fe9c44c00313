//! Scheduling hints for the daemon's threads: the acknowledgement path (the sessions' worker and
//! the journal writer) asks for short time slices, the processor runs at a lower priority.
//!
//! Both are best effort and need no privilege. A failure leaves the thread as it was (logged
//! once at info for the slices, at debug for the nice value): the daemon works the same, only
//! its latency under CPU contention is worse.
//!
//! Why short slices: at a steady 2,000 messages/s each `deliver_sm` is a commit of its own, and
//! its acknowledgement waits for three thread wake-ups (session, writer, session). On a busy
//! two-core machine a woken thread may wait for the running one to use up its slice (0.7 to 3 ms
//! under Linux's EEVDF scheduler), which is part of the ack latency's tail (the rest is the
//! disk's slow syncs). In seven alternating rounds at 2,000 msg/s the median ack p99 went from
//! 5.3 to 3.9 ms with this (BENCHMARKS.md, eighth session). Since Linux
//! 6.12 a normal (`SCHED_OTHER`) thread may ask for a shorter slice through `sched_setattr`'s
//! `sched_runtime`; a thread with a shorter slice gets an earlier deadline when it wakes and
//! may preempt one with a longer slice (the scheduler's `PREEMPT_SHORT`). It costs nothing in
//! throughput for threads that run briefly and block, which both of these do. Older kernels
//! ignore the field, and the call does not change the thread's nice value.

/// The slice asked for by threads on the acknowledgement path. The kernel's floor is 100 µs; a
/// session's work per wake-up (a window of PDUs) and a commit's `write` both fit in it.
const ACK_PATH_SLICE_NS: u64 = 100_000;

/// The nice value of the processor's thread (see [`yield_cpu_to_acknowledgements`]).
const PROCESSOR_NICE: i32 = 5;

/// Asks the scheduler for short time slices for the calling thread (see the module's header).
pub fn prefer_low_latency() {
    #[cfg(target_os = "linux")]
    {
        static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Err(e) = set_slice(ACK_PATH_SLICE_NS) {
            // Once per process (several threads ask): an operator who locked the call away
            // (seccomp) learns why the ack latency's tail is longer than it could be.
            if !REPORTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(error = %e, "cannot ask for short time slices for the acknowledgement path; it works, with more latency under CPU contention");
            }
        }
    }
}

/// Lowers the calling thread's CPU priority (nice +5). The processor calls it: when the CPU is
/// short, acknowledging what carriers deliver comes first, and processing catches up from the
/// journal a moment later.
pub fn yield_cpu_to_acknowledgements() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours; on
        // Linux, PRIO_PROCESS with a thread id applies to that thread alone.
        let outcome = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, PROCESSOR_NICE)
        };
        if outcome != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the processor's priority");
        }
    }
}

/// Sets the calling thread's slice, keeping its policy (normal) and nice value.
#[cfg(target_os = "linux")]
fn set_slice(slice_ns: u64) -> std::io::Result<()> {
    // SAFETY: gettid and getpriority take plain integers. getpriority may return -1 as a valid
    // nice value, so errno is cleared first and read after, as its manual asks.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        nice
    };
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        // sched_setattr sets the nice value too: passing the current one keeps it (a lower
        // one than the current would need a privilege).
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice_ns,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: the kernel reads `attr.size` bytes from a pointer to a live, fully initialised
    // sched_attr of that size; pid 0 is the calling thread.
    let outcome = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if outcome != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Reads the calling thread's scheduling attributes back.
    fn current_attr() -> libc::sched_attr {
        // SAFETY: all-zero is a valid sched_attr (plain integers).
        let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::sched_attr>() as u32;
        // SAFETY: the kernel writes at most `size` bytes into `attr`; pid 0 is this thread.
        let outcome = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                &mut attr as *mut libc::sched_attr,
                size,
                0,
            )
        };
        assert_eq!(outcome, 0, "{}", std::io::Error::last_os_error());
        attr
    }

    /// Whether the running kernel is at least `major.minor` (its release reads e.g. "6.18.44-fc").
    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let mut next = || {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        (next(), next()) >= (major, minor)
    }

    #[test]
    fn a_short_slice_keeps_the_policy_and_the_nice_value() {
        // A thread of its own: the test harness's threads are left as they were.
        std::thread::spawn(|| {
            yield_cpu_to_acknowledgements();
            let before = current_attr();
            assert_eq!(before.sched_nice, PROCESSOR_NICE);
            // A sandbox may forbid the call (seccomp); the daemon then runs as before.
            if let Err(e) = set_slice(ACK_PATH_SLICE_NS) {
                let forbidden = [libc::EPERM, libc::ENOSYS, libc::EACCES];
                assert!(forbidden.contains(&e.raw_os_error().unwrap_or(0)), "{e}");
                eprintln!("sched_setattr is not allowed here: {e}");
                return;
            }
            let after = current_attr();
            assert_eq!(after.sched_policy, libc::SCHED_OTHER as u32);
            assert_eq!(after.sched_nice, PROCESSOR_NICE, "the nice value is kept");
            // Linux 6.12 brought custom slices, and sched_getattr reports a normal thread's
            // slice from then on; older kernels accept the field and report 0.
            if kernel_at_least(6, 12) {
                assert_eq!(after.sched_runtime, ACK_PATH_SLICE_NS);
                assert_ne!(before.sched_runtime, ACK_PATH_SLICE_NS, "not the default");
            }
        })
        .join()
        .unwrap();
    }
}
