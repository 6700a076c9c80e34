//! A scheduling hint for the threads a durable send crosses.
//!
//! A send wakes the actor thread, then the store's writer, then its syncer, each in turn.
//! Under load the two CPUs are busy with tokio workers (ours and, on a shared machine, the
//! clients'), and a woken thread with the default slice waited ~85–125 µs for a CPU at each
//! step (BENCHMARKS.md, ninth session). Since Linux 6.12 (EEVDF) a thread may ask for a
//! shorter slice (`sched_attr.sched_runtime` under `SCHED_OTHER`): its deadline comes
//! earlier, so it preempts on wake-up, runs its short burst and yields. It is a latency hint,
//! not a priority: the thread's share of the CPU does not change and no privilege is needed.
//! Older kernels ignore the field; other systems have no such call. It is not honoured
//! everywhere: on the eighteenth session's host (preemption model "none", 250 Hz) a thread
//! asking for 100 µs still waited as long for a CPU held by busy threads as one without
//! (`bench/disk/fsync_beside_busy_cpus.py`); only a lower priority for those threads helped.
//!
//! With `server.hand_offs = "batched"` the actors' thread and the LSM store's writer run under
//! `SCHED_BATCH` instead (`spawn_hand_off`); the syncer, whose wake-up answers the sends, keeps
//! its short slice. Their wake-ups then do not preempt, so each runs a larger batch per
//! switch. Where a context switch is dear (a nested AMD guest, ~3.3 µs a hand-off) that cut
//! the server's CPU per send by 15–18%, and doubled `e2e`'s p99; on another such host it cut
//! 14% and delivered no later, on an Intel host 12.6% with a mixed p99: a setting for
//! deployments that want sends first (BENCHMARKS.md, thirty-fourth to thirty-sixth sessions).

use crate::config::HandOffs;

/// The slice asked for: about a writer's group commit under load (~0.2 ms), so that one
/// commit is seldom cut in two.
pub const SHORT_SLICE_NS: u64 = 200_000;

/// Asks the kernel for a short slice for the calling thread (see the module). Best effort: a
/// refusal is logged at debug and changes nothing else.
pub fn short_slice() {
    if let Err(e) = set_slice(SHORT_SLICE_NS) {
        tracing::debug!(error = %e, "scheduler slice hint not applied");
    }
}

/// Starts a named thread that a send wakes on its way and that should run as soon as it is
/// woken (the store's syncer, whose wake-up answers the sends; the SQLite engine's writer),
/// with the short slice asked for first.
pub fn spawn_woken<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    spawn_with(name, short_slice, f)
}

/// Starts a named thread that a send hands work to (the actors' thread, the LSM store's
/// writer), scheduled as `hand_offs` says: `Prompt`, as `spawn_woken`; `Batched`, under
/// `SCHED_BATCH`, so that its wake-up does not cut a tokio worker short: the worker reads on
/// and the thread takes a larger batch when it runs, so a send costs fewer context switches.
/// On two nested AMD hosts and an Intel one that was 12.6–18% less server CPU per send and
/// ~10–17% more h2load sends; `e2e`'s p99 doubled on one AMD host, was mixed on the Intel
/// one and no worse on the other AMD one (BENCHMARKS.md, thirty-fourth to thirty-sixth
/// sessions).
pub fn spawn_hand_off<T: Send + 'static>(
    name: &str,
    hand_offs: HandOffs,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let first = match hand_offs {
        HandOffs::Prompt => short_slice,
        HandOffs::Batched => batched,
    };
    spawn_with(name, first, f)
}

/// Waits for a thread that has been told to end, if it is still held, and logs it as `what`
/// if it panicked: the closing path goes on either way.
pub fn join(thread: Option<std::thread::JoinHandle<()>>, what: &str) {
    if let Some(t) = thread
        && t.join().is_err()
    {
        tracing::error!("{what} thread panicked");
    }
}

/// Starts a named thread that runs `first`, then `f`.
fn spawn_with<T: Send + 'static>(
    name: &str,
    first: fn(),
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            first();
            f()
        })
}

/// Puts the calling thread under `SCHED_BATCH` with the default slice (see `spawn_hand_off`).
/// Best effort: a refusal is logged at debug and changes nothing else.
fn batched() {
    if let Err(e) = set_batch() {
        tracing::debug!(error = %e, "SCHED_BATCH not applied");
    }
}

/// The nice value for background threads: fjall's worker, whose flushes take one of the two
/// CPUs for a third of a second or more at a time; at its default priority the threads a
/// message crosses queue behind it meanwhile and `e2e`'s slow messages come in those
/// episodes (BENCHMARKS.md, seventeenth session). At 19 it runs when they do not need the CPU;
/// it still gets a small share under full load (in a 300 s run at full load it kept up, with
/// no write halt).
pub const BACKGROUND_NICE: i32 = 19;

/// Gives every thread of this process whose name starts with `prefix` the nice value `nice`
/// (a thread's nice can be raised without privilege). Returns how many it set: none where
/// this system has no per-thread nice, or no such thread has named itself yet.
#[cfg(target_os = "linux")]
pub fn lower_priority_of(prefix: &str, nice: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .filter_map(|task| task.file_name().to_str()?.parse::<libc::id_t>().ok())
        // SAFETY: plain system call on a thread id of this process; on Linux PRIO_PROCESS
        // with a thread id sets that thread's nice alone.
        .filter(|&tid| unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0)
        .count()
}

/// No per-thread nice here: nothing is changed.
#[cfg(not(target_os = "linux"))]
pub fn lower_priority_of(_prefix: &str, _nice: i32) -> usize {
    0
}

/// `struct sched_attr` (include/uapi/linux/sched/types.h) up to `SCHED_ATTR_SIZE_VER1`.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

#[cfg(target_os = "linux")]
fn set_slice(ns: u64) -> std::io::Result<()> {
    let mut attr = other_policy()?;
    // Policy and nice stay as read; only the slice changes.
    attr.sched_runtime = ns;
    set_attributes(&mut attr)
}

#[cfg(target_os = "linux")]
fn set_batch() -> std::io::Result<()> {
    let mut attr = other_policy()?;
    attr.sched_policy = libc::SCHED_BATCH as u32;
    // 0: the default slice, not a hint.
    attr.sched_runtime = 0;
    set_attributes(&mut attr)
}

/// The calling thread's attributes, if it runs under `SCHED_OTHER`: a policy an operator
/// chose (`chrt --batch`, `--idle`, real-time) is left as it is.
#[cfg(target_os = "linux")]
fn other_policy() -> std::io::Result<SchedAttr> {
    let attr = attributes()?;
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Err(std::io::Error::other(format!(
            "the thread runs under policy {}, not SCHED_OTHER",
            attr.sched_policy
        )));
    }
    Ok(attr)
}

/// Sets the calling thread's scheduling attributes (`sched_setattr`) to `attr`, without flags.
#[cfg(target_os = "linux")]
fn set_attributes(attr: &mut SchedAttr) -> std::io::Result<()> {
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.sched_flags = 0;
    // SAFETY: `attr` is an initialised `sched_attr` of the size it declares and outlives the
    // call; pid 0 is the calling thread.
    checked(unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) })
}

/// The calling thread's scheduling attributes (`sched_getattr`).
#[cfg(target_os = "linux")]
fn attributes() -> std::io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel writes at most `size` bytes into `attr`, which is that large.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    checked(r).map(|()| attr)
}

/// A system call's result: 0 is success, anything else is `errno`.
#[cfg(target_os = "linux")]
fn checked(r: libc::c_long) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_slice(_ns: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no slice hint on this system",
    ))
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no SCHED_BATCH on this system",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_the_short_slice_where_the_kernel_has_one() {
        let (policy, before, after) = std::thread::spawn(|| {
            let attr = attributes().expect("sched_getattr");
            short_slice();
            let after = attributes().expect("sched_getattr").sched_runtime;
            (attr.sched_policy, attr.sched_runtime, after)
        })
        .join()
        .expect("thread");
        // Kernels without EEVDF's slice hint report 0 and keep it; newer ones report the
        // default slice first, then the one asked for (under SCHED_OTHER, which a test
        // process inherits unless it was started under another policy).
        if before != 0 && policy == libc::SCHED_OTHER as u32 {
            assert_ne!(before, SHORT_SLICE_NS, "the default slice is not the hint");
            assert_eq!(after, SHORT_SLICE_NS);
        }
    }

    #[test]
    fn a_batched_thread_runs_under_sched_batch_with_the_default_slice() {
        let (policy, applied, after, runtime) = std::thread::spawn(|| {
            let before = attributes().expect("sched_getattr").sched_policy;
            short_slice();
            let applied = set_batch().is_ok();
            let after = attributes().expect("sched_getattr");
            (before, applied, after.sched_policy, after.sched_runtime)
        })
        .join()
        .expect("thread");
        // A test process started under another policy keeps it (see `other_policy`), and a
        // sandbox may refuse the call.
        if applied {
            assert_eq!(policy, libc::SCHED_OTHER as u32);
            assert_eq!(after, libc::SCHED_BATCH as u32);
            assert_ne!(runtime, SHORT_SLICE_NS, "the short slice was dropped");
        }
    }

    #[test]
    fn threads_named_with_the_prefix_get_the_nice_value_and_no_other() {
        let nice_of = |tid: libc::pid_t| {
            let me = procfs::process::Process::myself().unwrap();
            i32::try_from(me.task_from_tid(tid).unwrap().stat().unwrap().nice).unwrap()
        };
        let spawn = |name: &str| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // SAFETY: gettid has no arguments and cannot fail.
                    tx.send(unsafe { libc::gettid() }).unwrap();
                    let _ = stop_rx.recv();
                })
                .unwrap();
            (rx.recv().unwrap(), stop_tx, t)
        };
        let (bg, stop_bg, t_bg) = spawn("test-bg-nice");
        let (fg, stop_fg, t_fg) = spawn("test-fg-nice");
        let inherited = nice_of(fg);
        assert!(lower_priority_of("test-bg-", BACKGROUND_NICE) >= 1);
        assert_eq!(nice_of(bg), BACKGROUND_NICE);
        assert_eq!(nice_of(fg), inherited, "another name is left as it was");
        drop((stop_bg, stop_fg));
        t_bg.join().unwrap();
        t_fg.join().unwrap();
    }

    #[test]
    fn a_policy_chosen_by_an_operator_is_left_alone() {
        let (policy, slice_before, slice_after) = std::thread::spawn(|| {
            let mut attr = attributes().expect("sched_getattr");
            // SCHED_BATCH needs no privilege.
            attr.sched_policy = libc::SCHED_BATCH as u32;
            set_attributes(&mut attr).expect("sched_setattr");
            let before = attributes().expect("sched_getattr").sched_runtime;
            short_slice();
            let after = attributes().expect("sched_getattr");
            (after.sched_policy, before, after.sched_runtime)
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_BATCH as u32);
        assert_eq!(slice_after, slice_before);
    }
}
