//! Closed-loop load: many workers over a few HTTP/2 connections, each issuing one call after
//! another; a warm-up, then a measured window recorded in HDR histograms.

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
    tokio::time::sleep(window).await;
    let cpu = meter.since(cpu_from);
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
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
