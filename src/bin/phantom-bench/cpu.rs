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
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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
        let (idle, machine) = machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let us = 1e6 / ticks_per_sec();
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
}

impl Reading {
    /// What was spent from `earlier` to this reading.
    pub fn since(&self, earlier: &Reading) -> Spent {
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
    pub fn add(self, other: Spent) -> Spent {
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

/// Clock ticks per second of `/proc`'s figures (`USER_HZ`).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// User plus system CPU of this process's children that have exited and been waited for, µs.
fn children_us() -> Option<f64> {
    // SAFETY: getrusage writes only the struct it is given, which lives on this stack.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return None;
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Some(us(ru.ru_utime) + us(ru.ru_stime))
}

/// User plus system ticks of a process, from `/proc/PID/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system ticks from a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces, so the fields are counted from its closing one.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (idle, total) ticks over every CPU from `/proc/stat`'s `cpu` line; iowait counts as idle.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (v.len() == 8).then(|| (v[3] + v[4], v.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_counted_after_a_name_with_spaces() {
        let stat = "4242 (tokio (x) 1) S 1 2 3 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn machine_idle_takes_iowait_and_total_takes_eight_fields() {
        let stat = "cpu  100 5 50 800 20 3 7 15 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(machine_ticks(stat), Some((820, 1000)));
        assert_eq!(machine_ticks("cpu0 1 2 3\n"), None);
    }

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
        };
        let r = me.read().expect("/proc on Linux");
        assert!(r.machine > 0 && r.server_us.is_some());
        // A child that burns some CPU, waited for: its CPU shows among the children's.
        let kids = Meter {
            server: None,
            client: Client::Children,
        };
        let before = kids.read().expect("getrusage");
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let spent = kids.read().expect("getrusage").since(&before);
        assert!(spent.client_us > 0.0, "{spent:?}");
    }
}
