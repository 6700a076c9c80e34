//! `--profile DIR`: CPU profiles of the server under test over each of its measured windows,
//! taken by the server itself (`GET /debug/pprof/profile`, `[metrics] profiling`; pprof-rs on
//! `SIGPROF`, which samples where `perf` cannot) and appended as collapsed stacks to
//! `DIR/<scenario>.folded`. `bench/prof/summary.py` reads them; so do flame graph tools.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cpu::Meter;

struct Profiler {
    /// The server's metrics listener, `host:port`.
    metrics: String,
    dir: PathBuf,
    /// What the windows being measured now are of: their file's name.
    label: Mutex<String>,
}

static PROFILER: OnceLock<Profiler> = OnceLock::new();

/// Profiles from now on, into `dir`, from the server whose metrics listener is `metrics`;
/// fails at once if that server takes no profiles.
pub async fn init(metrics: &str, dir: PathBuf) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("--profile {}: {e}", dir.display()))?;
    fetch(metrics, Duration::from_millis(10))
        .await
        .map_err(|e| format!("--profile: {e}"))?;
    let p = Profiler {
        metrics: metrics.to_string(),
        dir,
        label: Mutex::new(String::new()),
    };
    PROFILER
        .set(p)
        .map_err(|_| "--profile: set up twice".to_string())
}

/// Names the windows measured from now on (the scenario, and its rate or generator).
pub fn label(name: impl Into<String>) {
    if let Some(p) = PROFILER.get()
        && let Ok(mut l) = p.label.lock()
    {
        *l = name.into();
    }
}

/// A profile being taken over one window.
pub struct Taking(Option<JoinHandle<()>>);

/// Starts a profile of `window` if `meter` is the server under test and `--profile` was given.
pub fn start(meter: &Meter, window: Duration) -> Taking {
    let Some(p) = PROFILER.get().filter(|_| meter.profiled) else {
        return Taking(None);
    };
    let label = p.label.lock().map(|l| l.clone()).unwrap_or_default();
    let file = p.dir.join(format!("{label}.folded"));
    Taking(Some(tokio::spawn(async move {
        let written = match fetch(&p.metrics, window).await {
            Ok(stacks) => append(&file, &stacks),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            eprintln!("phantom-bench: profile of {label}: {e}");
        }
    })))
}

impl Taking {
    /// Waits until the window's profile is written.
    pub async fn finish(self) {
        if let Some(t) = self.0 {
            let _ = t.await;
        }
    }
}

fn append(file: &std::path::Path, stacks: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(stacks.as_bytes()))
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// A profile of `length` from the server's metrics listener.
async fn fetch(metrics: &str, length: Duration) -> Result<String, String> {
    let path = format!("/debug/pprof/profile?seconds={:.3}", length.as_secs_f64());
    match crate::external::get(metrics, &path).await? {
        (status, body) if status.contains(" 200 ") => Ok(body),
        (status, body) => Err(format!("{metrics} answered {status}: {}", body.trim())),
    }
}
