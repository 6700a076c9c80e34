//! CPU spent over a measured window (Linux `/proc`): by the server under test, by this tool
//! (the load's client) and left idle on the machine. Divided by the window's calls, it says
//! what one call cost each side, so a ratio to the echo ceiling can be read as the cost of a
//! call against an echo call's, on the same cores, in the same run.

/// Whose CPU a window is charged to: the process serving the calls, if known.
#[derive(Clone, Copy, Debug, Default)]
pub struct Meter {
    /// The serving process (the echo child, or the server under test).
    pub server: Option<u32>,
}

/// Clock ticks so far: the server's and this process's (user and system), the machine's idle
/// and its total over every CPU.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    server: Option<u64>,
    client: u64,
    idle: u64,
    machine: u64,
}

/// Ticks spent between two readings, summed over one or more windows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spent {
    server: Option<u64>,
    client: u64,
    idle: u64,
    machine: u64,
}

/// What one call (or message) cost, from [`Spent`] and the calls in it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PerCall {
    /// The server's CPU per call, µs (`None` for a `--target` without `--server-pid`).
    pub server_us: Option<f64>,
    /// This tool's CPU per call, µs.
    pub client_us: f64,
    /// The machine's idle share over the window, 0–1.
    pub idle: f64,
}

impl Meter {
    /// The ticks so far, or `None` where `/proc` cannot be read (not Linux).
    pub fn read(&self) -> Option<Reading> {
        let (idle, machine) = machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some(Reading {
            server: self.server.and_then(process_ticks),
            client: process_ticks(std::process::id())?,
            idle,
            machine,
        })
    }
}

impl Reading {
    /// What was spent from `earlier` to this reading.
    pub fn since(&self, earlier: &Reading) -> Spent {
        Spent {
            server: self
                .server
                .zip(earlier.server)
                .map(|(b, a)| b.saturating_sub(a)),
            client: self.client.saturating_sub(earlier.client),
            idle: self.idle.saturating_sub(earlier.idle),
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }
}

impl Spent {
    /// Adds another window's ticks; the server's stays known only if known in both.
    pub fn add(self, other: Spent) -> Spent {
        Spent {
            server: self.server.zip(other.server).map(|(a, b)| a + b),
            client: self.client + other.client,
            idle: self.idle + other.idle,
            machine: self.machine + other.machine,
        }
    }

    /// Per call, for `calls` calls, at `ticks_per_sec` (`None` with no calls or no ticks).
    pub fn per_call(&self, calls: u64, ticks_per_sec: f64) -> Option<PerCall> {
        if calls == 0 || self.machine == 0 || ticks_per_sec <= 0.0 {
            return None;
        }
        let us = |ticks: u64| ticks as f64 * 1e6 / ticks_per_sec / calls as f64;
        Some(PerCall {
            server_us: self.server.map(us),
            client_us: us(self.client),
            idle: self.idle as f64 / self.machine as f64,
        })
    }
}

/// Clock ticks per second of `/proc`'s figures (`USER_HZ`).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
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
    fn per_call_divides_the_windows_ticks_by_their_calls() {
        let a = Spent {
            server: Some(60),
            client: 30,
            idle: 10,
            machine: 200,
        };
        let both = a.add(a);
        // 120 server ticks at 100 per second over 40,000 calls: 30 µs each.
        let p = both.per_call(40_000, 100.0).expect("calls and ticks");
        assert_eq!(p.server_us, Some(30.0));
        assert_eq!(p.client_us, 15.0);
        assert_eq!(p.idle, 0.05);
        assert_eq!(a.per_call(0, 100.0), None);
        let unknown = Spent { server: None, ..a };
        assert_eq!(
            a.add(unknown).per_call(1, 100.0).map(|p| p.server_us),
            Some(None)
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let r = Meter { server: None }.read().expect("/proc on Linux");
        assert!(r.machine > 0);
    }
}
