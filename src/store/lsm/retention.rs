//! Retention without tombstones: each account's log shows its newest `keep` events (`[events]
//! retention_per_account`). An older event is not deleted when a new one pushes it out: once
//! the push is durable, the syncer raises the account's floor (`raise`), readers show nothing
//! at or below it (`floor`), and fjall drops what is below it when a compaction of `events`
//! next rewrites it (`Filter`). Until 2026-12-07 every event past the retention wrote a
//! tombstone for the one it pushed out, in the same batch: two more items for each send of an
//! account at its cap, ~3 µs of the server's CPU per send (BENCHMARKS.md, forty-fifth session).
//!
//! The floors follow durable heads, as readers do (`Durable`), so a crash cannot lose an event
//! that the recovered, lower head still shows. An event key is written once (account row,
//! seq), so a dropped event leaves no older version behind it to come back; one that did would
//! be at or below the floor, and hidden.
//!
//! Compactions drop events in no order, so below its floor a log may have gaps. A retention
//! raised at restart would lower the floors onto them: `load` then pins each log's floor where
//! the old retention had it (kept in `counters`), and the log grows back to the new length as
//! new events come.
//!
//! A compaction rewrites only the tables that new keys overlap, and an account's new events
//! sort after its old ones: a table holding nothing but one account's old events would never
//! be compacted again. `sweep` drops such tables whole (fjall's `drop_range`, which takes only
//! the tables inside the range), for each account whose floor rose by `SWEEP_AFTER` since, on
//! a thread of its own (`Sweeper`): a drop waits for any compaction of `events` under way, and
//! no thread that anything else waits for should wait with it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use fjall::{AbstractTree, Keyspace};

use super::{Tables, be, int_at, key2};
use crate::core::{CoreError, CoreResult};

/// The `counters` key of the retention the floors were last set with.
const KEEP: &[u8] = b"retention";

/// The `counters` key of an account's pinned floor: `PINNED` and its row.
const PINNED: &[u8] = b"retention_pin/";

fn pinned_key(row: i64) -> Vec<u8> {
    [PINNED, &be(row)[..]].concat()
}

/// How far an account's floor rises before `sweep` looks for its tables again: a table
/// wholly below the floor holds at least this many of its events, or is a flush's small one.
pub(super) const SWEEP_AFTER: u64 = 65_536;

/// The `events` keyspace's name, which the compaction filter is installed for.
pub(super) const EVENTS: &str = "events";

/// How many events each log shows, and what compactions may drop.
pub(crate) struct Retention {
    /// Events shown per account; `u64::MAX` (all) until the writer's state is loaded.
    keep: AtomicU64,
    /// Per account row, the newest seq that a durable head has pushed out of its log, and the
    /// floor its last sweep had.
    floors: RwLock<foldhash::HashMap<i64, Floor>>,
    /// Wakes the `Sweeper`, once one is started.
    sweeper: OnceLock<SyncSender<()>>,
}

/// An account's floor, and the one its last sweep had.
#[derive(Clone, Copy, Default)]
struct Floor {
    raised: u64,
    swept: u64,
}

impl Retention {
    /// Everything kept until `load`.
    pub fn new() -> Arc<Self> {
        Arc::new(Retention {
            keep: AtomicU64::new(u64::MAX),
            floors: RwLock::default(),
            sweeper: OnceLock::new(),
        })
    }

    /// At open: each log shows its newest `keep` events, its floor set from its head (every
    /// head on disk is durable then), or where it is pinned. A `keep` larger than the last one
    /// pins each log's floor where the last one had it (see the module doc).
    pub fn load(&self, t: &Tables, keep: u64, heads: &[(i64, u64)]) -> CoreResult<()> {
        let last = match t.counters.get(KEEP)? {
            Some(v) => Some(int_at(&v, 0)? as u64),
            None => None,
        };
        // One range read for every pin (there are none unless the setting was ever raised),
        // rather than a lookup per account.
        let mut pins = foldhash::HashMap::default();
        for g in t.counters.prefix(PINNED) {
            let (k, v) = g.into_inner()?;
            pins.insert(int_at(&k, PINNED.len())?, int_at(&v, 0)? as u64);
        }
        let mut batch = t.db.batch();
        let mut floors = Vec::with_capacity(heads.len());
        for &(row, head) in heads {
            let mut pinned = pins.get(&row).copied().unwrap_or(0);
            if let Some(last) = last.filter(|&last| last < keep) {
                let floor = head.saturating_sub(last);
                if floor > pinned {
                    batch.insert(&t.counters, pinned_key(row), be(floor as i64));
                    pinned = floor;
                }
            }
            floors.push((row, head.saturating_sub(keep).max(pinned)));
        }
        if last != Some(keep) {
            batch.insert(&t.counters, KEEP, be(keep as i64));
        }
        batch.commit()?;
        self.keep.store(keep, Ordering::Release);
        self.raise(&floors);
        Ok(())
    }

    /// Events shown per account (`u64::MAX` until `load`): an event at seq `keep + n` pushes
    /// seq `n` out of its log.
    pub fn keep(&self) -> u64 {
        self.keep.load(Ordering::Acquire)
    }

    /// Lets compactions drop each `(row, floor)`'s events up to `floor`: call it only once the
    /// heads that pushed them out are durable. Floors never go down.
    pub fn raise(&self, floors: &[(i64, u64)]) {
        // A poisoned lock only means a panic mid-insert: the map is still a map.
        let mut map = self.floors.write().unwrap_or_else(|e| e.into_inner());
        for &(row, floor) in floors {
            let at = map.entry(row).or_default();
            at.raised = at.raised.max(floor);
            if at.raised - at.swept >= SWEEP_AFTER
                && let Some(sweeper) = self.sweeper.get()
            {
                // Full: a wake-up is pending already.
                let _ = sweeper.try_send(());
            }
        }
    }

    /// The newest seq the log of the account at `row` no longer shows (0: none).
    pub fn floor(&self, row: i64) -> u64 {
        let map = self.floors.read().unwrap_or_else(|e| e.into_inner());
        map.get(&row).map_or(0, |f| f.raised)
    }

    /// Drops `events`' tables that hold only events at or below their account's floor, for
    /// each account whose floor rose by `at_least` since its last sweep. A table that a
    /// compaction holds is left to a later sweep. How many accounts were swept.
    pub fn sweep(&self, events: &Keyspace, at_least: u64) -> usize {
        let due: Vec<(i64, u64)> = {
            let map = self.floors.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(_, f)| f.raised - f.swept >= at_least.max(1))
                .map(|(&row, f)| (row, f.raised))
                .collect()
        };
        let mut swept = 0;
        for (row, floor) in due {
            let range = key2(row, 0)..=key2(row, floor);
            match events.tree.drop_range(range) {
                Ok(()) => {
                    let mut map = self.floors.write().unwrap_or_else(|e| e.into_inner());
                    if let Some(f) = map.get_mut(&row) {
                        f.swept = f.swept.max(floor);
                    }
                    swept += 1;
                }
                Err(e) => {
                    // Tried again once another floor comes due; the filter still drops what
                    // compactions rewrite.
                    tracing::warn!(error = %e, row, "store: dropping old event tables failed");
                }
            }
        }
        swept
    }

    /// The compaction filter factory of `events`.
    pub fn factory(self: &Arc<Self>) -> Arc<dyn Factory> {
        Arc::new(Dropper(self.clone()))
    }
}

/// The thread that sweeps `events` whenever a floor rose by `SWEEP_AFTER`; it sleeps
/// otherwise. Dropping it (or `stop`) ends the thread.
pub(crate) struct Sweeper {
    wake: SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `events` for `retention`'s floors.
    pub fn start(retention: Arc<Retention>, events: Keyspace) -> CoreResult<Self> {
        let (wake, woken) = sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let _ = retention.sweeper.set(wake.clone());
        let thread = std::thread::Builder::new()
            .name("phantom-lsm-sweeper".into())
            .spawn(move || {
                while woken.recv().is_ok() && !stopped.load(Ordering::Acquire) {
                    retention.sweep(&events, SWEEP_AFTER);
                }
            })
            .map_err(CoreError::internal)?;
        Ok(Sweeper {
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the thread (after the sweep under way, if any) and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
        crate::sched::join(self.thread.take(), "store: event table sweeper");
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a `Filter` for each compaction of `events`.
struct Dropper(Arc<Retention>);

impl Factory for Dropper {
    fn name(&self) -> &str {
        "phantom-retention"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(Filter {
            retention: self.0.clone(),
            last: None,
        })
    }
}

/// Drops the events at or below their account's floor.
struct Filter {
    retention: Arc<Retention>,
    /// The row last looked up and its floor: a compaction goes through keys in order, so one
    /// account's events come together.
    last: Option<(i64, u64)>,
}

impl CompactionFilter for Filter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        // A key that is no event key is kept: this filter never guesses.
        let key = item.key();
        let (Ok(row), Ok(seq)) = (int_at(&key[..], 0), int_at(&key[..], 8)) else {
            return Ok(Verdict::Keep);
        };
        let floor = match self.last {
            Some((r, floor)) if r == row => floor,
            _ => {
                let floor = self.retention.floor(row);
                self.last = Some((row, floor));
                floor
            }
        };
        Ok(if (seq as u64) <= floor {
            Verdict::Destroy
        } else {
            Verdict::Keep
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::lsm::{Tables, be};

    /// A floor that rises by `SWEEP_AFTER` wakes the sweeper, which drops the table below it;
    /// a table of another account stays. Stopping ends the thread.
    #[test]
    fn the_sweeper_wakes_when_a_floor_rises_far_enough() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tables::open(dir.path()).unwrap();
        for (row, seqs) in [(1, 1..=10), (2, 1..=10)] {
            for seq in seqs {
                t.events.insert(key2(row, seq), b"event").unwrap();
            }
            // One table per account.
            t.events.rotate_memtable_and_wait().unwrap();
        }
        let mut sweeper = Sweeper::start(t.retention.clone(), t.events.clone()).unwrap();
        t.retention.raise(&[(1, SWEEP_AFTER - 1)]);
        t.retention.raise(&[(1, SWEEP_AFTER)]);
        let stored = |row| t.events.prefix(be(row)).count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stored(1) > 0 {
            assert!(
                Instant::now() < deadline,
                "the sweeper never dropped the table"
            );
            std::thread::yield_now();
        }
        assert_eq!(stored(2), 10);
        sweeper.stop();
        assert!(sweeper.thread.is_none());
    }
}
