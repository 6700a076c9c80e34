//! The processes under test: the Phantom server (the release binary next to this one, on a temp
//! data dir) and the echo ceiling (this binary, `--serve-echo`). Both are killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The admin token of a server this tool starts.
pub const ADMIN: &str = "phantom-bench-admin-token";

/// A child process serving on `addr`.
pub struct Served {
    child: Child,
    /// Where it listens.
    pub addr: String,
    /// Where it serves `GET /metrics`, if it does.
    pub metrics: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Served {
    /// Its process id, for memory figures.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and reads one stdout line per `(prefix, suffix)`, `<prefix><value><suffix>`:
/// its address, then (if asked) its metrics address. The child prints nothing after them, so
/// the pipe can close.
fn start(
    mut cmd: Command,
    lines: &[(&str, &str)],
    dir: Option<tempfile::TempDir>,
) -> Result<Served, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut values = Vec::with_capacity(lines.len());
    for (prefix, suffix) in lines {
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let value = line
            .trim()
            .strip_prefix(prefix)
            .and_then(|v| v.strip_suffix(suffix))
            .ok_or_else(|| format!("unexpected line from {cmd:?}: {line:?}"))?;
        values.push(value.to_string());
    }
    let addr = values.first().cloned().ok_or("no address line expected")?;
    Ok(Served {
        child,
        addr,
        metrics: values.get(1).cloned(),
        _dir: dir,
    })
}

/// The server binary beside this one (same build profile), unless given.
pub fn server_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = me.with_file_name("phantom-grpc-api");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it (cargo build --release) or pass --server-bin",
            p.display()
        ))
    }
}

/// Starts the Phantom server on a temp data dir, with limits that do not throttle a load test.
pub fn phantom(binary: &Path, engine: &str) -> Result<Served, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\nengine = {engine:?}\ndata_dir = {:?}\n\
             [auth]\nadmin_token = \"{ADMIN}\"\n\
             [limits]\nsend_rate_per_sec = 1000000000\nsend_burst = 1000000000\n\
             max_event_streams_per_account = 1000000\nmax_streams_per_connection = 100000\n\
             [events]\nretention_per_account = 1000000\n\
             [log]\nlevel = \"warn\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(&config)
        .env_remove("PHANTOM_ADMIN_TOKEN");
    let lines = [
        ("phantom-grpc-api listening on ", ""),
        ("metrics on http://", "/metrics"),
    ];
    start(cmd, &lines, Some(dir))
}

/// Starts the echo ceiling (this binary), on bare tonic or through `net::Coalesced`;
/// `durable`: the durable echo, its log in a temp dir removed with it.
pub fn echo(coalesced: bool, durable: bool) -> Result<Served, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(me);
    cmd.args(["--serve-echo", "127.0.0.1:0"]);
    if coalesced {
        cmd.arg("--echo-coalesced");
    }
    // On the temp dir's file system, as the server's data dir is.
    let dir = if durable {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        cmd.arg("--echo-durable").arg(dir.path());
        Some(dir)
    } else {
        None
    };
    start(cmd, &[("echo listening on ", "")], dir)
}

/// Resident memory of a process, bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(process.status().ok()?.vmrss? * 1024)
}
