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

/// How the tool starts the Phantom server: `engine` (`storage.engine`), and what it leaves at
/// the server's default unless given.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `storage.engine`.
    pub engine: String,
    /// Listen on a Unix socket in the server's temp dir instead of 127.0.0.1.
    pub unix: bool,
    /// `server.runtime`, if given.
    pub runtime: Option<String>,
    /// `server.hand_offs`, if given.
    pub hand_offs: Option<String>,
    /// `metrics.profiling`: serve CPU profiles (`--profile`).
    pub profiling: bool,
}

impl Settings {
    /// The config file of a server whose data and socket are in `dir`, with limits that do
    /// not throttle a load test.
    fn config(&self, dir: &Path) -> String {
        let listen = if self.unix {
            format!("unix:{}", dir.join("phantom.sock").display())
        } else {
            "127.0.0.1:0".into()
        };
        let mut server = format!("[server]\nlisten = {listen:?}\n");
        if let Some(r) = &self.runtime {
            server += &format!("runtime = {r:?}\n");
        }
        if let Some(h) = &self.hand_offs {
            server += &format!("hand_offs = {h:?}\n");
        }
        format!(
            "{server}\
             [storage]\nengine = {:?}\ndata_dir = {:?}\n\
             [auth]\nadmin_token = \"{ADMIN}\"\n\
             [limits]\nsend_rate_per_sec = 1000000000\nsend_burst = 1000000000\n\
             max_event_streams_per_account = 1000000\nmax_streams_per_connection = 100000\n\
             [events]\nretention_per_account = 1000000\n\
             [log]\nlevel = \"warn\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\nprofiling = {}\n",
            self.engine,
            dir.join("data"),
            self.profiling
        )
    }
}

/// Starts the Phantom server on a temp data dir as `settings` say.
pub fn phantom(binary: &Path, settings: &Settings) -> Result<Served, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, settings.config(dir.path())).map_err(|e| e.to_string())?;
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
/// `durable`: the durable echo, its log in a temp dir removed with it; `unix`: on a Unix
/// socket in that dir instead of 127.0.0.1.
pub fn echo(coalesced: bool, durable: bool, unix: bool) -> Result<Served, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(me);
    // On the temp dir's file system, as the server's data dir is.
    let dir = if durable || unix {
        Some(tempfile::tempdir().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let listen = match &dir {
        Some(d) if unix => format!("unix:{}", d.path().join("echo.sock").display()),
        _ => "127.0.0.1:0".into(),
    };
    cmd.arg("--serve-echo").arg(listen);
    if coalesced {
        cmd.arg("--echo-coalesced");
    }
    if durable && let Some(d) = &dir {
        cmd.arg("--echo-durable").arg(d.path());
    }
    start(cmd, &[("echo listening on ", "")], dir)
}

/// Resident memory of a process, bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(process.status().ok()?.vmrss? * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use phantom::config::{Config, Engine, HandOffs, RuntimeKind};

    #[test]
    fn the_server_config_says_what_the_settings_say() {
        let dir = Path::new("/tmp/bench-dir");
        let given = Settings {
            engine: "sqlite".into(),
            unix: true,
            runtime: Some("single_thread".into()),
            hand_offs: Some("batched".into()),
            profiling: true,
        };
        // Read as the server reads it.
        let cfg = Config::parse(&given.config(dir)).expect("a config the server takes");
        assert_eq!(cfg.server.listen, "unix:/tmp/bench-dir/phantom.sock");
        assert_eq!(cfg.server.runtime, RuntimeKind::SingleThread);
        assert_eq!(cfg.server.hand_offs, HandOffs::Batched);
        assert_eq!(cfg.storage.engine, Engine::Sqlite);
        assert_eq!(cfg.storage.data_dir, dir.join("data"));
        assert_eq!(cfg.auth.admin_token, ADMIN);
        assert!(cfg.metrics.profiling);

        // Unset, the server's own defaults stand, on loopback TCP.
        let plain = Settings {
            engine: "lsm".into(),
            ..Settings::default()
        };
        let cfg = Config::parse(&plain.config(dir)).expect("a config the server takes");
        assert_eq!(cfg.server.listen, "127.0.0.1:0");
        let defaults = Config::default().server;
        assert_eq!(cfg.server.runtime, defaults.runtime);
        assert_eq!(cfg.server.hand_offs, defaults.hand_offs);
        assert!(!cfg.metrics.profiling);
    }
}
