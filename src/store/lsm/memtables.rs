//! Rotates fjall's memtables, and frees the flushed ones, on a thread of our own; it also
//! gives fjall's worker thread a background priority (`sched::BACKGROUND_NICE`).
//!
//! **Rotation.** fjall's own trigger can stop every flush for good (fjall 3.1.13): each write to
//! a keyspace whose memtable is past `max_memtable_size` queues a `RotateMemtable` message for
//! fjall's workers (`Keyspace::request_rotation`, `try_send`), so while the workers are busy
//! the queue (1,000 messages) fills within milliseconds; a worker that then rotates a memtable
//! sends `Flush` into that full queue and blocks (`inner_rotate_memtable`, a blocking `send`).
//! With one worker, or two rotating two keyspaces at once, no one is left to drain the queue:
//! no memtable is rotated or flushed again while writes go on, and memory and journals grow
//! without bound (seen once in eight sustained runs of the server with one worker; made to
//! happen in seconds with one worker and with two by a small program writing to five
//! keyspaces, every worker's stack in that `send`; BENCHMARKS.md, sixteenth session). This
//! thread rotates a memtable itself once it passes `ROTATE_AT`, below fjall's trigger, so no
//! write queues a rotation and the workers only ever get `Flush` and `Compact` messages (a
//! few per rotation). Were that queue ever full, this thread's `Flush` would wait for the
//! workers to drain it, not a worker for itself.
//!
//! **Freeing.** fjall drops a flushed memtable when it prunes a keyspace's old versions, at the
//! next memtable rotation, and it does so holding that keyspace's version lock (fjall 3.1.13,
//! `Keyspace::inner_rotate_memtable`; lsm-tree 3.1.10, `SuperVersions::maintenance`). Freeing
//! a 64 MiB skiplist of a few hundred thousand entries took 70–90 ms of CPU there, and every
//! write to the keyspace waits for that lock meanwhile: the writer's next commit, and with it
//! every send and receipt behind it (BENCHMARKS.md, thirteenth session). This thread keeps a
//! reference to every memtable it sees, so fjall's drop only lets go of one reference; once
//! the only one left is ours, the memtable is freed here, where nothing waits for it.
//!
//! **Small keyspaces.** fjall drops a journal only once every keyspace has flushed what it
//! holds, and a keyspace written rarely (accounts, tokens, contacts: at sign-up) never reaches
//! `ROTATE_AT`, so it kept every journal since its first write until fjall's cap of 512 MiB of
//! journals made it flush, and then ~5 journals went at once (BENCHMARKS.md, forty-eighth
//! session). Each time fjall seals a journal, this thread rotates every memtable under
//! `STRAGGLER_UNDER` that has been active since the seal before: it grew less than that over a
//! whole journal, so it would hold journals back for many more (`Stragglers`).
//!
//! **Lulls** (`storage.flush_when_idle_ms`, off by default). Once nothing has been written for
//! that long and the memtables hold 1 MiB or more together, this thread rotates every one that
//! holds anything, so fjall flushes them in the lull and drops the sealed journals they kept: a
//! start after a crash in the lull replays at most the active journal, and the next burst
//! begins with empty memtables (`idle_due`). It logs when those flushes are done.
//!
//! `Keyspace::tree`, `Keyspace::rotate_memtable` and `AbstractTree` are public but hidden from
//! fjall's docs; a later fjall that frees memtables outside the lock and whose rotation cannot
//! block a worker would let this module go.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{AbstractTree, Database, Keyspace, PersistMode};

use crate::core::{CoreError, CoreResult};
use crate::sched;

/// How often the keyspaces are looked at. A memtable lives for seconds under load (from its
/// first write until its table is written), so none is missed; one freed by fjall before this
/// saw it is only freed as before. Between two looks a keyspace grows by about a MiB at most
/// (a send writes ~1.2 KiB in all, so 40,000 sends/s put well under 64 MiB/s into any one
/// keyspace), far less than the 16 MiB margin below fjall's own trigger.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// How often the keyspaces are looked at once no memtable has changed for `STILL_AFTER` looks:
/// an idle server then wakes this thread 5 times a second instead of 50 (a laptop's or a
/// phone's CPU sleeps deeper between wake-ups). A burst after that grows a keyspace by well
/// under 13 MiB before the next look (at the rate above), still inside the 16 MiB margin; from
/// that look on, the keyspaces are looked at every `LOOK_EVERY` again.
const STILL_LOOK_EVERY: Duration = Duration::from_millis(200);

/// Looks that saw no memtable change before `STILL_LOOK_EVERY` applies.
const STILL_AFTER: u32 = 10;

/// The memtable size at which this thread rotates: 16 MiB below fjall's default
/// `max_memtable_size` (64 MiB), which every keyspace of ours has (fjall keeps a keyspace's
/// options from its creation), so fjall's own trigger never fires.
const ROTATE_AT: u64 = 48 << 20;

/// A memtable under this size, active since before the last journal was sealed, holds journals
/// back and is rotated at the next seal. fjall seals a journal at the first flush past 64 MB;
/// a keyspace that grew less than this over one would take over 16 journals to reach
/// `ROTATE_AT`.
const STRAGGLER_UNDER: u64 = ROTATE_AT / 16;

/// The keeper thread; dropping it (or `stop`) ends the thread and frees what it holds.
pub(crate) struct Keeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping the memtables of `keyspaces`, all of `db`; with `flush_when_idle`, they
    /// are also flushed once nothing has been written for that long (`idle_due`).
    pub fn start(
        db: Database,
        keyspaces: Vec<Keyspace>,
        flush_when_idle: Option<Duration>,
    ) -> CoreResult<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("phantom-lsm-memtables".into())
            .spawn(move || run(&db, &keyspaces, flush_when_idle, &stopped))
            .map_err(CoreError::internal)?;
        Ok(Keeper {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Ends the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.take();
        crate::sched::join(self.thread.take(), "memtable keeper");
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often a rotation that keeps failing is logged again.
const COMPLAIN_EVERY: Duration = Duration::from_secs(10);

/// fjall's worker threads' name (fjall 3.1.13, `worker_pool.rs`).
const FJALL_WORKER: &str = "fjall:worker";

fn run(
    db: &Database,
    keyspaces: &[Keyspace],
    flush_when_idle: Option<Duration>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut held = Vec::new();
    let mut failures: Vec<Failures> = keyspaces.iter().map(|_| Failures::default()).collect();
    let mut stragglers = Stragglers::new(&memtables_of(keyspaces), db.journal_count());
    // fjall's worker names itself once it runs, so it is looked for until found, for a second
    // at most (were fjall to name it differently, it would be looked for forever).
    let mut looks_for_worker = 50;
    let mut stillness = Stillness::default();
    // A lull's flush under way: when it began, and the bytes rotated.
    let mut lull: Option<(Instant, u64)> = None;
    loop {
        if looks_for_worker > 0 {
            looks_for_worker -= 1;
            if sched::lower_priority_of(FJALL_WORKER, sched::BACKGROUND_NICE) > 0 {
                looks_for_worker = 0;
            } else if looks_for_worker == 0 {
                tracing::debug!(
                    "no {FJALL_WORKER} thread found: fjall's worker keeps its priority"
                );
            }
        }
        rotate_full(keyspaces, ROTATE_AT, &mut failures);
        let active: Vec<_> = keyspaces
            .iter()
            .map(|ks| ks.tree.active_memtable())
            .collect();
        let memtables: Vec<_> = active.iter().map(|m| (m.id(), m.size())).collect();
        // A straggler's new memtable is kept from the next look on (`LOOK_EVERY`).
        let journals = db.journal_count();
        rotate_stragglers(
            keyspaces,
            &memtables,
            journals,
            &mut stragglers,
            &mut failures,
        );
        look(active.into_iter(), &mut held);
        // Looking for fjall's worker counts as a change: it is looked for every `LOOK_EVERY`.
        let now = Instant::now();
        let wait = stillness.next_look(&memtables, looks_for_worker > 0, now);
        if let Some(after) = flush_when_idle {
            let bytes: u64 = idle_due(&memtables, stillness.still_for(now), after)
                .into_iter()
                .filter(|&i| rotate(&keyspaces[i], &mut failures[i]))
                .map(|i| memtables[i].1)
                .sum();
            if bytes > 0 {
                lull = Some((now, bytes));
            }
        }
        if let Some((began, bytes)) = lull
            && keyspaces
                .iter()
                .all(|ks| ks.tree.sealed_memtable_count() == 0)
        {
            lull = None;
            let took = began.elapsed();
            tracing::info!(bytes, ?took, "store: memtables flushed in a lull");
        }
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            // The store is closing: what is held goes with this thread.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Whether the keyspaces are being written, from what each look saw of their memtables.
#[derive(Default)]
struct Stillness {
    /// Each keyspace's active memtable (id, size) at the last look.
    seen: Vec<(u64, u64)>,
    /// Looks in a row that saw them unchanged.
    still_looks: u32,
    /// The first look that saw them as they are now, while they stay unchanged.
    still_since: Option<Instant>,
}

impl Stillness {
    /// How long until the next look, given what the look at `now` saw (`changed`: count it as
    /// a change whatever it saw). What it saw is copied only when it changed.
    fn next_look(&mut self, memtables: &[(u64, u64)], changed: bool, now: Instant) -> Duration {
        self.still_looks = if memtables == self.seen.as_slice() && !changed {
            self.still_looks.saturating_add(1)
        } else {
            self.still_since = Some(now);
            self.seen.clear();
            self.seen.extend_from_slice(memtables);
            0
        };
        if self.still_looks >= STILL_AFTER {
            STILL_LOOK_EVERY
        } else {
            LOOK_EVERY
        }
    }

    /// How long, at `now`, the memtables have been as the last look saw them (zero before
    /// the first look). Memtables unchanged since then mean nothing was written.
    fn still_for(&self, now: Instant) -> Duration {
        self.still_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// The bytes the active memtables must hold together for `idle_due` to flush them: with less, a
/// server written a little at a time, one write every few seconds, would flush a table per write.
const IDLE_FLUSH_FROM: u64 = 1 << 20;

/// The keyspaces whose memtables to rotate (`storage.flush_when_idle_ms`), given this look's
/// memtables (id, size) and how long nothing has been written: once that is `after` or more,
/// with `IDLE_FLUSH_FROM` bytes or more in them together, each that holds anything. fjall's
/// worker then flushes them in the lull, not in the next burst of writes, and drops every
/// sealed journal they kept: a start after a crash in the lull replays at most the active
/// journal. Rotated, they are empty, so a lull flushes once.
fn idle_due(memtables: &[(u64, u64)], still_for: Duration, after: Duration) -> Vec<usize> {
    let held: u64 = memtables.iter().map(|&(_, size)| size).sum();
    if still_for < after || held < IDLE_FLUSH_FROM {
        return Vec::new();
    }
    memtables
        .iter()
        .enumerate()
        .filter(|&(_, &(_, size))| size > 0)
        .map(|(i, _)| i)
        .collect()
}

/// Rotates the memtable of each keyspace that holds `at` bytes or more; fjall's workers then
/// flush it. `failures` has one entry per keyspace.
fn rotate_full(keyspaces: &[Keyspace], at: u64, failures: &mut [Failures]) {
    for (ks, failures) in keyspaces.iter().zip(failures) {
        if ks.tree.active_memtable().size() >= at {
            rotate(ks, failures);
        }
    }
}

/// Rotates the memtables `Stragglers` finds holding journals back, if fjall sealed a journal
/// since the last look; `memtables` and `journals` are this look's. `failures` has one entry
/// per keyspace.
fn rotate_stragglers(
    keyspaces: &[Keyspace],
    memtables: &[(u64, u64)],
    journals: usize,
    stragglers: &mut Stragglers,
    failures: &mut [Failures],
) {
    for i in stragglers.due(memtables, journals) {
        rotate(&keyspaces[i], &mut failures[i]);
    }
}

/// Rotates one keyspace's memtable, logging as `Failures` says; whether it worked.
fn rotate(ks: &Keyspace, failures: &mut Failures) -> bool {
    match ks.rotate_memtable() {
        Ok(_) => {
            failures.ended(|failed| {
                tracing::info!(keyspace = %ks.name(), failed, "memtable rotation works again");
            });
            true
        }
        // fjall rotates under its journal's lock; a failure here is the journal's, which
        // the writer's next commit meets and reports too.
        Err(e) => {
            failures.failed(Instant::now(), |failed| {
                tracing::error!(
                    keyspace = %ks.name(), error = %e, failed,
                    "memtable rotation failed",
                );
            });
            false
        }
    }
}

/// Each keyspace's active memtable: (id, size in bytes).
fn memtables_of(keyspaces: &[Keyspace]) -> Vec<(u64, u64)> {
    keyspaces
        .iter()
        .map(|ks| {
            let m = ks.tree.active_memtable();
            (m.id(), m.size())
        })
        .collect()
}

/// Finds the small memtables that hold journals back, one decision per journal fjall seals.
struct Stragglers {
    /// fjall's journal count at the last look: it grows by one when a journal is sealed, and
    /// falls when fjall drops old ones.
    journals: usize,
    /// Each keyspace's active memtable id when the last journal was sealed (or at start).
    at_last_seal: Vec<u64>,
}

impl Stragglers {
    /// Starts from the keyspaces' memtables (id, size) and fjall's journal count now.
    fn new(memtables: &[(u64, u64)], journals: usize) -> Self {
        Stragglers {
            journals,
            at_last_seal: memtables.iter().map(|&(id, _)| id).collect(),
        }
    }

    /// The keyspaces to rotate, given this look's memtables and journal count: none unless
    /// the count grew (a journal was sealed); then each memtable that holds anything, is under
    /// `STRAGGLER_UNDER`, and was already active at the seal before. A younger one may hold
    /// none of a sealed journal's writes (a large keyspace just after its own rotation).
    fn due(&mut self, memtables: &[(u64, u64)], journals: usize) -> Vec<usize> {
        // A seal and a drop between two looks leave the count as it was: that seal is missed,
        // and the next one finds the same memtables.
        let sealed = journals > self.journals;
        self.journals = journals;
        if !sealed {
            return Vec::new();
        }
        let due = memtables
            .iter()
            .zip(&self.at_last_seal)
            .enumerate()
            .filter(|&(_, (&(id, size), &then))| id == then && size > 0 && size < STRAGGLER_UNDER)
            .map(|(i, _)| i)
            .collect();
        self.at_last_seal = memtables.iter().map(|&(id, _)| id).collect();
        due
    }
}

/// How long a graceful close waits for the flushes `flush_all` starts before it gives up
/// waiting (what is left unflushed is still in the journal, replayed at the next start).
pub(crate) const FLUSH_AT_CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// Rotates every keyspace's memtable that holds anything and waits, up to `within`, until
/// fjall's worker has flushed them all; fjall then drops the journals they kept. Run at a
/// graceful close, once nothing writes: otherwise the next start replays every journal not
/// yet dropped (4.2–4.4 s before the server listened after a minute of full sends, before
/// `Stragglers`; BENCHMARKS.md, forty-eighth session). Returns the bytes flushed and whether
/// every flush finished in time; it stops waiting at once if fjall is poisoned (its worker
/// failed: no flush will finish).
pub(crate) fn flush_all(db: &Database, keyspaces: &[Keyspace], within: Duration) -> (u64, bool) {
    let deadline = Instant::now() + within;
    let mut bytes = 0;
    for ks in keyspaces {
        let size = ks.tree.active_memtable().size();
        if size == 0 {
            continue;
        }
        match ks.rotate_memtable() {
            Ok(_) => bytes += size,
            // The memtable stays, and its journal with it: the next start replays it.
            Err(e) => {
                tracing::warn!(keyspace = %ks.name(), error = %e, "memtable flush at close failed")
            }
        }
    }
    // fjall's worker flushes what was rotated, keyspace by keyspace; fjall has no wait for a
    // flush but a test helper that sleeps the same way.
    while keyspaces
        .iter()
        .any(|ks| ks.tree.sealed_memtable_count() > 0)
    {
        // With nothing buffered, `persist` only asks whether fjall is poisoned.
        if Instant::now() >= deadline || db.persist(PersistMode::Buffer).is_err() {
            return (bytes, false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (bytes, true)
}

/// A keyspace's run of failed rotations, logged when it starts and then once per
/// `COMPLAIN_EVERY` (this thread tries again every `LOOK_EVERY`, so a journal that keeps failing
/// would otherwise log fifty errors a second), and when it ends.
#[derive(Default)]
struct Failures {
    /// Failures in the run so far, and when the last was logged.
    run: Option<(u64, Instant)>,
}

impl Failures {
    /// Counts a failure; `log` is called with the run's count when it is time to say so.
    fn failed(&mut self, now: Instant, log: impl FnOnce(u64)) {
        match &mut self.run {
            Some((failed, logged)) => {
                *failed += 1;
                if now.duration_since(*logged) >= COMPLAIN_EVERY {
                    *logged = now;
                    log(*failed);
                }
            }
            None => {
                self.run = Some((1, now));
                log(1);
            }
        }
    }

    /// Ends a run of failures, if there was one; `log` is called with its count.
    fn ended(&mut self, log: impl FnOnce(u64)) {
        if let Some((failed, _)) = self.run.take() {
            log(failed);
        }
    }
}

/// Keeps each of the keyspaces' active memtables that is new here, and frees those only held
/// here (fjall's own type, `Arc<lsm_tree::Memtable>`, is inferred: fjall does not export it).
fn look<M>(active: impl Iterator<Item = Arc<M>>, held: &mut Vec<Arc<M>>) {
    for memtable in active {
        if !held.iter().any(|h| Arc::ptr_eq(h, &memtable)) {
            held.push(memtable);
        }
    }
    held.retain(|h| Arc::strong_count(h) > 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in a temp dir with the keyspaces `names`, empty.
    fn keyspaces<const N: usize>(names: [&str; N]) -> (tempfile::TempDir, Database, [Keyspace; N]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = fjall::Database::builder(dir.path()).open().expect("open");
        let ks = names.map(|n| {
            db.keyspace(n, fjall::KeyspaceCreateOptions::default)
                .expect("keyspace")
        });
        (dir, db, ks)
    }

    /// A database in a temp dir with one keyspace, `k`, holding `a` = `1` in its memtable.
    fn one_keyspace() -> (tempfile::TempDir, Database, Keyspace) {
        let (dir, db, [ks]) = keyspaces(["k"]);
        ks.insert("a", "1").expect("insert");
        (dir, db, ks)
    }

    #[test]
    fn a_memtable_past_the_size_is_rotated_and_flushed_and_no_other() {
        let (_dir, _db, [big, small]) = keyspaces(["big", "small"]);
        big.insert("a", vec![0u8; 4096]).expect("insert");
        small.insert("a", "1").expect("insert");
        let (big_id, small_id) = (
            big.tree.active_memtable().id(),
            small.tree.active_memtable().id(),
        );

        rotate_full(
            &[big.clone(), small.clone()],
            4096,
            &mut [Failures::default(), Failures::default()],
        );

        assert_ne!(
            big.tree.active_memtable().id(),
            big_id,
            "past the size: rotated"
        );
        assert_eq!(
            small.tree.active_memtable().id(),
            small_id,
            "under it: left alone"
        );
        // fjall's workers flush what was rotated: the value is then read from a table.
        let deadline = Instant::now() + Duration::from_secs(30);
        while big.tree.sealed_memtable_count() > 0 {
            assert!(Instant::now() < deadline, "never flushed");
            std::thread::yield_now();
        }
        assert_eq!(big.tree.table_count(), 1, "flushed to one table");
        assert_eq!(big.get("a").expect("get").map(|v| v.len()), Some(4096));
    }

    #[test]
    fn flush_all_leaves_nothing_for_the_next_start_to_replay() {
        let names = ["written", "touched", "empty"];
        let dir = {
            let (dir, db, ks) = keyspaces(names);
            for i in 0..1000u32 {
                ks[0]
                    .insert(i.to_be_bytes(), vec![7u8; 100])
                    .expect("insert");
            }
            ks[1].insert("a", "1").expect("insert");

            let (bytes, done) = flush_all(&db, &ks, Duration::from_secs(30));

            assert!(done, "every flush finished");
            assert!(bytes > 1000 * 100, "what the memtables held: {bytes}");
            let tables: Vec<_> = ks.iter().map(|k| k.tree.table_count()).collect();
            assert_eq!(
                tables,
                [1, 1, 0],
                "a table for each keyspace written, none for the other"
            );
            assert!(ks.iter().all(|k| k.tree.active_memtable().is_empty()));
            dir
        };
        // Reopened, fjall replays nothing into the memtables: all of it is read from tables.
        let written = reopened_with_nothing_replayed(&dir, &names, "written");
        assert_eq!(written.len().expect("len"), 1000);
        assert_eq!(
            written.get(999u32.to_be_bytes()).expect("get").as_deref(),
            Some(&[7u8; 100][..])
        );
    }

    /// The database in `dir` reopened, having checked that fjall replayed nothing from its
    /// journal into the keyspaces `names`; returns the keyspace `read`.
    fn reopened_with_nothing_replayed(
        dir: &tempfile::TempDir,
        names: &[&str],
        read: &str,
    ) -> Keyspace {
        let db = fjall::Database::builder(dir.path()).open().expect("reopen");
        let open = |n: &str| {
            db.keyspace(n, fjall::KeyspaceCreateOptions::default)
                .expect("keyspace")
        };
        for &n in names {
            assert!(
                open(n).tree.active_memtable().is_empty(),
                "{n} replayed from the journal"
            );
        }
        open(read)
    }

    #[test]
    fn flush_all_stops_waiting_once_fjall_is_poisoned() {
        let (dir, db, ks) = one_keyspace();
        // The flush cannot write its table: fjall's worker fails and poisons the database.
        std::fs::remove_dir_all(dir.path().join("keyspaces")).expect("remove");
        let within = Duration::from_secs(600);
        let started = Instant::now();

        let (_, done) = flush_all(&db, std::slice::from_ref(&ks), within);

        assert!(!done, "the flush never finished");
        assert!(
            started.elapsed() < within / 2,
            "gave up once poisoned, not at the deadline"
        );
        assert!(db.persist(PersistMode::Buffer).is_err(), "poisoned");
    }

    #[test]
    fn small_memtables_active_since_the_last_seal_are_due_at_the_next_one() {
        let small = STRAGGLER_UNDER - 1;
        // Four keyspaces: small and old, empty, large, small and old.
        let mut s = Stragglers::new(&[(1, 10), (2, 0), (3, 10), (4, 10)], 1);
        let now = [(1, 10), (2, 0), (3, STRAGGLER_UNDER), (4, small)];
        assert!(s.due(&now, 1).is_empty(), "no journal sealed");
        assert!(s.due(&now, 0).is_empty(), "journals dropped, none sealed");
        assert_eq!(
            s.due(&now, 1),
            [0, 3],
            "sealed: the small ones that hold anything"
        );
        // Rotated, they have new memtables, written since: not due at the next seal, since a
        // memtable younger than the last seal may hold none of a sealed journal's writes.
        let after = [(5, 10), (2, 0), (3, STRAGGLER_UNDER + 20), (6, 10)];
        assert!(s.due(&after, 1).is_empty(), "no journal sealed");
        assert!(s.due(&after, 2).is_empty(), "new since the last seal");
        assert_eq!(s.due(&after, 3), [0, 3], "active since the last seal");
    }

    #[test]
    fn a_small_keyspace_no_longer_holds_the_journals_back() {
        let (_dir, db, ks) = keyspaces(["small", "big"]);
        let mut failures = [Failures::default(), Failures::default()];
        let mut stragglers = Stragglers::new(&memtables_of(&ks), db.journal_count());
        ks[0].insert("a", "1").expect("insert");
        // Past fjall's 64 MB journal in values lz4 cannot shrink; fjall seals the journal
        // at the next flush.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..66u32 {
            let value: Vec<u8> = (0..(1 << 20) / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            ks[1].insert(i.to_be_bytes(), value).expect("insert");
        }
        ks[1].rotate_memtable_and_wait().expect("flush");
        assert_eq!(
            db.journal_count(),
            2,
            "sealed, and kept for the small keyspace"
        );

        let journals = db.journal_count();
        rotate_stragglers(
            &ks,
            &memtables_of(&ks),
            journals,
            &mut stragglers,
            &mut failures,
        );

        // The small keyspace is flushed, and fjall drops the sealed journal after it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.journal_count() > 1 {
            assert!(Instant::now() < deadline, "the sealed journal stayed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            ks[0].tree.table_count(),
            1,
            "the small keyspace was flushed"
        );
        assert_eq!(ks[0].get("a").expect("get").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn looks_slow_down_once_nothing_is_written_and_speed_up_at_the_first_write() {
        let mut s = Stillness::default();
        let quiet = vec![(1, 100), (2, 50)];
        // The first look has nothing to compare with; then unchanged looks keep the busy pace
        // until STILL_AFTER of them in a row.
        for look in 0..STILL_AFTER {
            assert_eq!(
                s.next_look(&quiet, false, Instant::now()),
                LOOK_EVERY,
                "look {look}"
            );
        }
        assert_eq!(s.next_look(&quiet, false, Instant::now()), STILL_LOOK_EVERY);
        assert_eq!(s.next_look(&quiet, false, Instant::now()), STILL_LOOK_EVERY);
        // A write (a size grew), a rotation (a new id), or a forced change: busy again at once.
        for changed in [vec![(1, 101), (2, 50)], vec![(1, 100), (3, 0)]] {
            for _ in 0..=STILL_AFTER {
                s.next_look(&quiet, false, Instant::now());
            }
            assert_eq!(s.next_look(&changed, false, Instant::now()), LOOK_EVERY);
            assert_eq!(s.next_look(&quiet, false, Instant::now()), LOOK_EVERY);
        }
        for _ in 0..=STILL_AFTER {
            assert_eq!(s.next_look(&quiet, true, Instant::now()), LOOK_EVERY);
        }
    }

    #[test]
    fn stillness_says_how_long_the_memtables_have_been_unchanged() {
        let mut s = Stillness::default();
        let t0 = Instant::now();
        assert_eq!(s.still_for(t0), Duration::ZERO, "no look yet");
        let quiet = vec![(1, 100), (2, 50)];
        s.next_look(&quiet, false, t0);
        s.next_look(&quiet, false, t0 + Duration::from_millis(20));
        assert_eq!(
            s.still_for(t0 + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        // A write, then nothing: still from the look that saw the write.
        let t1 = t0 + Duration::from_secs(3);
        s.next_look(&[(1, 130), (2, 50)], false, t1);
        s.next_look(&[(1, 130), (2, 50)], false, t1 + Duration::from_millis(200));
        assert_eq!(
            s.still_for(t1 + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        // A forced change starts it again too.
        let t2 = t1 + Duration::from_secs(5);
        s.next_look(&[(1, 130), (2, 50)], true, t2);
        assert_eq!(s.still_for(t2), Duration::ZERO);
    }

    #[test]
    fn a_lull_flushes_every_memtable_that_holds_anything_once_they_hold_enough() {
        let after = Duration::from_secs(2);
        let big = IDLE_FLUSH_FROM / 2 + 1;
        let memtables = [(1, big), (2, 0), (3, big), (4, 10)];
        assert_eq!(
            idle_due(&memtables, after, after),
            [0, 2, 3],
            "the lull is long enough: each that holds anything"
        );
        assert!(
            idle_due(&memtables, after - Duration::from_millis(1), after).is_empty(),
            "not yet"
        );
        let little = [(1, IDLE_FLUSH_FROM / 2), (2, IDLE_FLUSH_FROM / 2 - 1)];
        assert!(
            idle_due(&little, after * 10, after).is_empty(),
            "under IDLE_FLUSH_FROM together: left to fill"
        );
        assert!(
            idle_due(&[(5, 0), (6, 0)], after * 10, after).is_empty(),
            "flushed already: the lull flushes once"
        );
    }

    #[test]
    fn after_a_lull_a_crash_leaves_nothing_to_replay() {
        let names = ["a", "b", "touched", "empty"];
        let dir = {
            let (dir, db, ks) = keyspaces(names);
            let keeper = Keeper::start(db.clone(), ks.to_vec(), Some(Duration::from_millis(100)))
                .expect("keeper");
            for i in 0..600u32 {
                for k in &ks[..2] {
                    k.insert(i.to_be_bytes(), vec![i as u8; 1024])
                        .expect("insert");
                }
            }
            ks[2].insert("x", "1").expect("insert");
            // The keeper flushes the three written keyspaces once nothing is written.
            let deadline = Instant::now() + Duration::from_secs(60);
            while ks[..3].iter().any(|k| k.tree.table_count() == 0)
                || ks.iter().any(|k| k.tree.sealed_memtable_count() > 0)
            {
                assert!(Instant::now() < deadline, "never flushed in the lull");
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(
                ks[3].tree.table_count(),
                0,
                "nothing to flush in the empty one"
            );
            // A crash: no close, no flush; only what fjall wrote is on the disk.
            drop(keeper);
            drop(ks);
            drop(db);
            dir
        };
        let a = reopened_with_nothing_replayed(&dir, &names, "a");
        assert_eq!(a.len().expect("len"), 600);
        assert_eq!(
            a.get(599u32.to_be_bytes()).expect("get").as_deref(),
            Some(&[599u32 as u8; 1024][..])
        );
    }

    #[test]
    fn failed_rotations_are_logged_when_they_start_then_every_so_often() {
        let mut f = Failures::default();
        let mut logged = Vec::new();
        let t0 = Instant::now();
        f.ended(|n| logged.push(("ended", n)));
        assert!(logged.is_empty(), "no run, nothing to say");
        f.failed(t0, |n| logged.push(("failed", n)));
        for i in 1..500 {
            f.failed(t0 + LOOK_EVERY * i, |n| logged.push(("failed", n)));
        }
        // 500 failures over ten seconds: the first is logged, then one at ten seconds.
        assert_eq!(logged, [("failed", 1)]);
        f.failed(t0 + COMPLAIN_EVERY, |n| logged.push(("failed", n)));
        f.ended(|n| logged.push(("ended", n)));
        f.ended(|n| logged.push(("ended", n)));
        assert_eq!(logged, [("failed", 1), ("failed", 501), ("ended", 501)]);
        // A new run is logged at once.
        f.failed(t0 + COMPLAIN_EVERY, |n| logged.push(("failed", n)));
        assert_eq!(logged.last(), Some(&("failed", 1)));
    }

    #[test]
    fn a_memtable_is_freed_here_once_fjall_lets_go_of_it() {
        let (_dir, db, ks) = one_keyspace();
        let active = || std::iter::once(ks.tree.active_memtable());
        let mut held = Vec::new();
        look(active(), &mut held);
        look(active(), &mut held);
        assert_eq!(held.len(), 1, "the same memtable is held once");
        let first = Arc::as_ptr(&held[0]);

        // Sealed and flushed: fjall's versions still hold it until it prunes them.
        ks.rotate_memtable_and_wait().expect("flush");
        ks.insert("b", "2").expect("insert");
        look(active(), &mut held);
        let sealed = held.iter().find(|h| Arc::as_ptr(h) == first);
        assert!(
            sealed.is_some_and(|h| Arc::strong_count(h) > 1),
            "fjall still holds it"
        );
        assert_eq!(held.len(), 2, "the new active memtable is held too");

        // The next rotation prunes the versions that held it: fjall lets go of it, and the
        // next look frees it here, with the database open.
        ks.rotate_memtable_and_wait().expect("flush");
        look(active(), &mut held);
        assert!(
            !held.iter().any(|h| Arc::as_ptr(h) == first),
            "the flushed memtable was freed by the keeper"
        );

        // Closed, nothing else holds the rest.
        drop(ks);
        drop(db);
        look(std::iter::empty(), &mut held);
        assert!(held.is_empty());
    }
}
