//! CPU profiles of this process on request: `GET /debug/pprof/profile?seconds=N` on the metrics
//! listener, when `[metrics] profiling = true`. pprof-rs samples whichever thread is running on
//! `SIGPROF` (the process's CPU clock), so it works in guests where `perf` cannot sample
//! (Firecracker guests without a PMU; BENCHMARKS.md). Time a thread spends in a system call is
//! sampled on its way back, in the libc wrapper that made the call, so the kernel's share shows
//! under the call that caused it.
//!
//! The answer is collapsed stacks, one line per distinct stack: `thread;outermost;...;innermost
//! count`, the input of `flamegraph.pl` and `inferno-flamegraph`, and of `bench/prof/summary.py`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The longest profile one request may ask for.
pub const MAX_SECONDS: f64 = 300.0;

/// A profile's length when the request names none.
pub const DEFAULT_SECONDS: f64 = 10.0;

/// Samples per second of CPU time asked of the kernel. It delivers them on its scheduler tick,
/// so a kernel with a slower tick samples less often; the shares stay right.
const FREQUENCY: i32 = 999;

/// One profile at a time: the sampling timer is the process's.
static TAKING: AtomicBool = AtomicBool::new(false);

/// Why no profile was taken.
#[derive(Debug, PartialEq)]
pub enum ProfileError {
    /// The query was wrong; the text names the parameter.
    BadRequest(String),
    /// Another profile is being taken.
    Busy,
    /// The sampler could not start or report.
    Failed(String),
}

/// The profile's length from a request's query string (`seconds=N`, fractions allowed).
pub fn requested(query: Option<&str>) -> Result<Duration, ProfileError> {
    let mut seconds = DEFAULT_SECONDS;
    for (key, value) in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
    {
        match key {
            "seconds" => seconds = value
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s <= MAX_SECONDS)
                .ok_or_else(|| {
                    ProfileError::BadRequest(format!(
                        "seconds must be a number over 0 and at most {MAX_SECONDS}, got {value:?}"
                    ))
                })?,
            other => {
                return Err(ProfileError::BadRequest(format!(
                    "unknown parameter {other:?}; only seconds is taken"
                )));
            }
        }
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Samples this process for `length` (or until `stop`), then returns the collapsed stacks,
/// commonest first.
pub async fn take(length: Duration, stop: &CancellationToken) -> Result<String, ProfileError> {
    if TAKING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    let _taking = scopeguard::guard((), |_| TAKING.store(false, Ordering::Release));
    // Only the vDSO is left out: its unwind tables are wrong on some systems. Samples in libc
    // stay, since they carry the system calls' time.
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["vdso"])
        .build()
        .map_err(|e| ProfileError::Failed(e.to_string()))?;
    tokio::select! {
        _ = tokio::time::sleep(length) => {}
        _ = stop.cancelled() => {}
    }
    // Resolving symbols reads the binary's tables: off the async workers. The guard stops
    // sampling when dropped, at the end of this closure.
    tokio::task::spawn_blocking(move || {
        let report = guard
            .report()
            .build()
            .map_err(|e| ProfileError::Failed(e.to_string()))?;
        let mut lines: Vec<(String, isize)> = report
            .data
            .iter()
            .map(|(frames, count)| {
                let mut stack = clean(&frames.thread_name);
                // Innermost first; the sampler's own frames, which pprof leaves in an
                // unoptimised build, are not the program's.
                let program: Vec<_> = frames
                    .frames
                    .iter()
                    .skip_while(|f| f.iter().all(|s| is_sampler(&s.name())))
                    .collect();
                for frame in program.into_iter().rev() {
                    for symbol in frame.iter().rev() {
                        stack.push(';');
                        stack.push_str(&clean(&symbol.name()));
                    }
                }
                (stack, *count)
            })
            .collect();
        lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(lines
            .into_iter()
            .map(|(stack, count)| format!("{stack} {count}\n"))
            .collect())
    })
    .await
    .map_err(|e| ProfileError::Failed(e.to_string()))?
}

/// Whether a frame is the sampler's: the unwinder called from pprof's signal handler.
fn is_sampler(name: &str) -> bool {
    name.starts_with("backtrace::") || name.starts_with("pprof::") || name.starts_with("<pprof::")
}

/// A frame or thread name as one field of a collapsed stack: `;` separates frames and the last
/// space the count, so neither may appear inside a name.
fn clean(name: &str) -> String {
    name.replace(';', ",").replace(' ', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_comes_from_seconds_within_bounds() {
        assert_eq!(requested(None), Ok(Duration::from_secs(10)));
        assert_eq!(requested(Some("")), Ok(Duration::from_secs(10)));
        assert_eq!(
            requested(Some("seconds=2.5")),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(requested(Some("seconds=300")), Ok(Duration::from_secs(300)));
        for bad in [
            "seconds=0",
            "seconds=-1",
            "seconds=301",
            "seconds=x",
            "seconds=",
        ] {
            match requested(Some(bad)) {
                Err(ProfileError::BadRequest(m)) => assert!(m.contains("seconds"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match requested(Some("secs=3")) {
            Err(ProfileError::BadRequest(m)) => assert!(m.contains("secs"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_samplers_frames_are_told_apart() {
        assert!(is_sampler("backtrace::backtrace::libunwind::trace"));
        assert!(is_sampler(
            "<pprof::backtrace::backtrace_rs::Trace as pprof::backtrace::Trace>::trace"
        ));
        assert!(!is_sampler(
            "std::sys::backtrace::__rust_begin_short_backtrace"
        ));
        assert!(!is_sampler("__GI_fdatasync"));
    }

    #[test]
    fn names_lose_what_would_split_a_stack() {
        assert_eq!(clean("<[u8; 16] as X>::f"), "<[u8,_16]_as_X>::f");
    }
}
