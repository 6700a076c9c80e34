//! CPU spent over a measured window (Linux `/proc`): by the server under test, by the load's
//! client (this tool, or h2load) and left idle on the machine. Divided by the window's calls,
//! it says what one call cost each side, so a ratio to the echo ceiling can be read as the
//! cost of a call against an echo call's, on the same cores, in the same run.

/// Where a window's CPU is read: the process serving the calls, if known, and the client.
#[derive(Clone, Copy, Debug)]
pub struct Meter {
    /// The serving process (the echo child, or the server under test).
    pub server: Option<u32>,
    /// The load's client.
    pub client: Client,
    /// The server under test, whose windows `--profile` profiles (`profile`).
    pub profiled: bool,
}

/// Which process is the load's client.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// This tool.
    This,
    /// This tool's children once they have exited and been waited for (h2load, run once per
    /// window; the server and the echo child are never waited for before the end).
    Children,
}

/// CPU so far: the server's and the client's (user and system, µs), and the machine's idle
/// and total clock ticks over every CPU.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    server_us: Option<f64>,
    client_us: f64,
    idle: u64,
    machine: u64,
}

/// CPU spent between two readings, summed over one or more windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spent {
    server_us: Option<f64>,
    client_us: f64,
    idle: u64,
    machine: u64,
}

/// What one call (or message) cost, from [`Spent`] and the calls in it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PerCall {
    /// The server's CPU per call, µs (`None` for a `--target` without `--server-pid`).
    pub server_us: Option<f64>,
    /// The client's CPU per call, µs.
    pub client_us: f64,
    /// The machine's idle share over the window, 0–1.
    pub idle: f64,
}

impl Meter {
    /// The CPU so far, or `None` where it cannot be read (not Linux).
    pub fn read(&self) -> Option<Reading> {
        let (idle, machine) = machine_ticks()?;
        let us = 1e6 / procfs::ticks_per_second() as f64;
        let client_us = match self.client {
            Client::This => process_ticks(std::process::id())? as f64 * us,
            Client::Children => children_us()?,
        };
        Some(Reading {
            server_us: self.server.and_then(process_ticks).map(|t| t as f64 * us),
            client_us,
            idle,
            machine,
        })
    }

    /// What was spent from `from` (an earlier `read`) until now; `None` if either reading
    /// failed.
    pub fn since(&self, from: Option<Reading>) -> Option<Spent> {
        self.read().zip(from).map(|(now, then)| now.since(&then))
    }
}

/// What several windows spent in all; unknown if any one of them is.
pub fn total(windows: impl IntoIterator<Item = Option<Spent>>) -> Option<Spent> {
    windows
        .into_iter()
        .collect::<Option<Vec<Spent>>>()?
        .into_iter()
        .reduce(Spent::add)
}

impl Reading {
    /// What was spent from `earlier` to this reading.
    fn since(&self, earlier: &Reading) -> Spent {
        Spent {
            server_us: self
                .server_us
                .zip(earlier.server_us)
                .map(|(b, a)| (b - a).max(0.0)),
            client_us: (self.client_us - earlier.client_us).max(0.0),
            idle: self.idle.saturating_sub(earlier.idle),
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }
}

impl Spent {
    /// Adds another window's CPU; the server's stays known only if known in both.
    fn add(self, other: Spent) -> Spent {
        Spent {
            server_us: self.server_us.zip(other.server_us).map(|(a, b)| a + b),
            client_us: self.client_us + other.client_us,
            idle: self.idle + other.idle,
            machine: self.machine + other.machine,
        }
    }

    /// Per call, for `calls` calls (`None` with no calls or no ticks).
    pub fn per_call(&self, calls: u64) -> Option<PerCall> {
        if calls == 0 || self.machine == 0 {
            return None;
        }
        let n = calls as f64;
        Some(PerCall {
            server_us: self.server_us.map(|us| us / n),
            client_us: self.client_us / n,
            idle: self.idle as f64 / self.machine as f64,
        })
    }
}

/// User plus system CPU of this process's children that have exited and been waited for, µs.
fn children_us() -> Option<f64> {
    // SAFETY: rusage is plain integers, so all zeroes is a valid value; getrusage writes only
    // the struct it is given, which lives on this stack.
    let (ru, rc) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        (ru, rc)
    };
    if rc != 0 {
        return None;
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Some(us(ru.ru_utime) + us(ru.ru_stime))
}

/// User plus system ticks of a process (`/proc/PID/stat`).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some(stat.utime + stat.stime)
}

/// (idle, total) ticks over every CPU (`/proc/stat`); iowait counts as idle, and guest time
/// is inside user time already.
fn machine_ticks() -> Option<(u64, u64)> {
    use procfs::CurrentSI;
    let t = procfs::KernelStats::current().ok()?.total;
    let more = [t.iowait, t.irq, t.softirq, t.steal].map(|v| v.unwrap_or(0));
    let idle = t.idle + more[0];
    Some((
        idle,
        t.user + t.nice + t.system + t.idle + more.iter().sum::<u64>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_call_divides_the_windows_cpu_by_their_calls() {
        let a = Spent {
            server_us: Some(600_000.0),
            client_us: 300_000.0,
            idle: 10,
            machine: 200,
        };
        let both = a.add(a);
        // 1.2 s of the server's CPU over 40,000 calls: 30 µs each.
        let p = both.per_call(40_000).expect("calls and ticks");
        assert_eq!(p.server_us, Some(30.0));
        assert_eq!(p.client_us, 15.0);
        assert_eq!(p.idle, 0.05);
        assert_eq!(a.per_call(0), None);
        let unknown = Spent {
            server_us: None,
            ..a
        };
        assert_eq!(a.add(unknown).per_call(1).map(|p| p.server_us), Some(None));
    }

    #[test]
    fn this_process_and_its_children_can_be_read() {
        let me = Meter {
            server: Some(std::process::id()),
            client: Client::This,
            profiled: false,
        };
        let r = me.read().expect("/proc on Linux");
        assert!(r.machine > 0 && r.idle <= r.machine && r.server_us.is_some());
        // A child that burns some CPU, waited for: its CPU shows among the children's.
        let kids = Meter {
            server: None,
            client: Client::Children,
            profiled: false,
        };
        let before = kids.read();
        assert!(before.is_some(), "getrusage");
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let spent = kids.since(before).expect("getrusage");
        assert!(spent.client_us > 0.0, "{spent:?}");
    }
}
