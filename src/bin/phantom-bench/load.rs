//! Closed-loop load: many workers over a few HTTP/2 connections, each issuing one call after
//! another; a warm-up, then a measured window recorded in HDR histograms. And open-loop load:
//! calls started at a fixed rate whatever the earlier ones are doing, as `e2e` sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cpu::{self, Meter, Spent};

/// One call of a scenario, by worker index.
pub type Op = Arc<
    dyn Fn(usize) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> + Send + Sync,
>;

/// What a load run measured.
#[derive(Debug)]
pub struct Measured {
    /// Calls completed in the window.
    pub ops: u64,
    /// Calls that failed in the window.
    pub errors: u64,
    /// The window, seconds.
    pub secs: f64,
    /// Latency of successful calls, microseconds.
    pub micros: Histogram<u64>,
    /// The first error, to say what went wrong.
    pub first_error: Option<String>,
    /// CPU spent over the window, where `/proc` could be read.
    pub cpu: Option<Spent>,
}

impl Measured {
    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Adds another window's figures to these.
    fn merge(&mut self, other: Measured) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.secs += other.secs;
        let _ = self.micros.add(&other.micros);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.cpu = cpu::total([self.cpu, other.cpu]);
    }
}

/// Runs `a` and `b` in `rounds` alternating windows that add up to `window` each, so that a
/// change in what the machine gives us (a noisy neighbour, a frequency step) falls on both
/// alike and their ratio stays meaningful. The first window of each gets the full warm-up,
/// later ones a short one to bring the connections back to a steady state.
pub async fn paired(
    workers: usize,
    warmup: Duration,
    window: Duration,
    rounds: u32,
    a: (&Op, Meter),
    b: (&Op, Meter),
) -> (Measured, Measured) {
    let rounds = rounds.max(1);
    let slice = window / rounds;
    let rewarm = warmup.min(Duration::from_millis(500));
    let mut ma = run(workers, warmup, slice, a.0.clone(), a.1).await;
    let mut mb = run(workers, warmup, slice, b.0.clone(), b.1).await;
    for _ in 1..rounds {
        ma.merge(run(workers, rewarm, slice, a.0.clone(), a.1).await);
        mb.merge(run(workers, rewarm, slice, b.0.clone(), b.1).await);
    }
    (ma, mb)
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;

/// Runs `workers` concurrent loops of `op` for `warmup + window`; the window's CPU is read
/// through `meter`.
pub async fn run(
    workers: usize,
    warmup: Duration,
    window: Duration,
    op: Op,
    meter: Meter,
) -> Measured {
    let phase = Arc::new(AtomicU8::new(WARMING));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (phase, stop, op) = (phase.clone(), stop.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = op(w).await;
                if phase.load(Ordering::Relaxed) != MEASURING || stop.load(Ordering::Relaxed) {
                    continue;
                }
                match r {
                    Ok(()) => {
                        ops += 1;
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                    }
                }
            }
            (h, ops, errors, first_error)
        }));
    }
    tokio::time::sleep(warmup).await;
    phase.store(MEASURING, Ordering::Relaxed);
    let (started, cpu_from) = (Instant::now(), meter.read());
    let taking = crate::profile::start(&meter, window);
    tokio::time::sleep(window).await;
    let cpu = meter.since(cpu_from);
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    // After the window's figures: the calls counted and the CPU read cover the same window.
    taking.finish().await;
    let mut m = Measured {
        ops: 0,
        errors: 0,
        secs,
        micros: histogram(),
        first_error: None,
        cpu,
    };
    for t in tasks {
        if let Ok((h, ops, errors, e)) = t.await {
            let _ = m.micros.add(&h);
            m.ops += ops;
            m.errors += errors;
            if m.first_error.is_none() {
                m.first_error = e;
            }
        }
    }
    m
}

/// Open-loop pacing: a tick every 1/rate s for a warm-up and then a measured window, late ticks
/// coming at once (a slow moment of the machine does not lower the rate asked for).
pub struct Pace {
    tick: tokio::time::Interval,
    measure_from: Instant,
    deadline: Instant,
}

impl Pace {
    /// Ticks at `rate` per second (at least one) over `warmup + window`, starting now.
    pub fn new(rate: f64, warmup: Duration, window: Duration) -> Pace {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let now = Instant::now();
        Pace {
            tick,
            measure_from: now + warmup,
            deadline: now + warmup + window,
        }
    }

    /// When the measured window begins.
    pub fn measured_from(&self) -> Instant {
        self.measure_from
    }

    /// Waits for the next tick: `None` once the run is over, else whether the tick falls in
    /// the measured window.
    pub async fn next(&mut self) -> Option<bool> {
        if Instant::now() >= self.deadline {
            return None;
        }
        self.tick.tick().await;
        Some(Instant::now() >= self.measure_from)
    }
}

/// Starts `op` at `rate` per second for `warmup + window` (open loop) and records how long each
/// call started in the window took, from its start to its reply. Waits at most `settle` for
/// the window's last calls; one still unanswered then counts as an error. `ops` is the calls
/// answered OK, `secs` the window: so `rate()` is what was answered, and errors say what was
/// not.
pub async fn open_loop(
    rate: f64,
    warmup: Duration,
    window: Duration,
    settle: Duration,
    op: Op,
    meter: Meter,
) -> Measured {
    /// What the window's calls came to, recorded as each is answered.
    struct Window {
        micros: Histogram<u64>,
        ok: u64,
        errors: u64,
        first_error: Option<String>,
    }
    let seen = Arc::new(std::sync::Mutex::new(Window {
        micros: histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    }));
    let calls = tokio_util::task::TaskTracker::new();
    let mut pace = Pace::new(rate, warmup, window);
    let (mut started, mut n) = (0u64, 0usize);
    let mut from = None;
    while let Some(measuring) = pace.next().await {
        let call = op(n);
        n += 1;
        if !measuring {
            calls.spawn(call);
            continue;
        }
        if from.is_none() {
            from = Some((Instant::now(), meter.read()));
        }
        started += 1;
        let seen = seen.clone();
        calls.spawn(async move {
            let t = Instant::now();
            let r = call.await;
            let took = t.elapsed().as_micros().max(1) as u64;
            let mut w = seen.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(()) => {
                    w.ok += 1;
                    let _ = w.micros.record(took);
                }
                Err(e) => {
                    w.errors += 1;
                    w.first_error
                        .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                }
            }
        });
    }
    let (secs, cpu) = match from {
        Some((t, cpu_from)) => (t.elapsed().as_secs_f64(), meter.since(cpu_from)),
        None => (window.as_secs_f64(), None),
    };
    calls.close();
    let settled = tokio::time::timeout(settle, calls.wait()).await.is_ok();
    // A poisoned lock still holds every figure recorded before the panic.
    let mut w = seen.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, mut errors, mut first_error) = (w.ok, w.errors, w.first_error.take());
    let micros = std::mem::replace(&mut w.micros, histogram());
    drop(w);
    if !settled {
        let late = started.saturating_sub(ok + errors);
        errors += late;
        first_error.get_or_insert_with(|| format!("{late} calls unanswered after {settle:?}"));
    }
    Measured {
        ops: ok,
        errors,
        secs,
        micros,
        first_error,
        cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Client;

    /// An open-loop run of `op` at 1,000/s: 20 ms of warm-up, 60 ms measured, 50 ms to settle.
    async fn open(op: Op) -> Measured {
        let meter = Meter {
            server: None,
            client: Client::This,
            profiled: false,
        };
        let ms = Duration::from_millis;
        open_loop(1_000.0, ms(20), ms(60), ms(50), op, meter).await
    }

    #[tokio::test]
    async fn an_open_loop_times_what_was_answered_and_counts_what_was_not() {
        let answered = open(Arc::new(|_| Box::pin(async { Ok(()) }))).await;
        assert!(answered.ops > 0, "{answered:?}");
        assert_eq!(answered.errors, 0);
        assert_eq!(answered.micros.len(), answered.ops);

        let refused = open(Arc::new(|_| {
            Box::pin(async { Err(tonic::Status::unavailable("down")) })
        }))
        .await;
        assert_eq!(refused.ops, 0);
        assert!(refused.errors > 0);
        assert_eq!(refused.first_error.as_deref(), Some("Unavailable: down"));

        // Calls that never answer are errors once the settling time is over, not lost.
        let silent = open(Arc::new(|_| Box::pin(futures::future::pending()))).await;
        assert_eq!(silent.ops, 0);
        assert!(silent.errors > 0);
        let said = silent.first_error.unwrap_or_default();
        assert!(said.contains("unanswered"), "{said}");
    }
}
