//! The syncer thread: makes committed batches durable and only then lets them out.
//!
//! The writer commits without an fsync (SQLite with `synchronous = NORMAL` writes the WAL frames
//! but does not fsync them; the LSM engine hands its journal's buffer to the OS) and hands each
//! committed batch here. This thread fsyncs the file once for every batch that is waiting, then
//! publishes each batch's events and answers its callers, in commit order. The writer meanwhile
//! runs the next batch, so the disk's flush and the engine's work overlap instead of taking
//! turns (PostgreSQL's WAL writer does the same).
//!
//! Nothing leaves before its fsync: replies, events to the bus, and what readers may see of
//! the event log and messages (see `Durable`). A failed fsync refuses its batches and every
//! later write, since what reached the disk is then unknown.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::EventSink;
use super::jobs::WriteOutput;
use crate::core::{AccountId, CommittedEvent, CoreError, CoreResult};

/// Committed batches that may wait for the disk before the writer waits in turn.
const SYNC_QUEUE: usize = 64;
/// How long batches of receipts alone wait for a batch that needs an fsync anyway: under
/// load, a message's receipt then shares the next send's fsync instead of taking its own (on a
/// virtual disk each fsync costs ~100 µs of CPU, profiled); idle, it goes out this much later.
const RECEIPT_WAIT: Duration = Duration::from_millis(2);

/// One reply and the result it carries.
pub(crate) type Reply = (
    oneshot::Sender<CoreResult<WriteOutput>>,
    CoreResult<WriteOutput>,
);

/// A committed, not yet durable batch.
pub(crate) struct Committed {
    pub replies: Vec<Reply>,
    pub events: Vec<CommittedEvent>,
    /// Newest message row this batch wrote, if any.
    pub message_row: Option<i64>,
    /// Only receipts (`jobs::can_wait`): may wait up to `RECEIPT_WAIT` for its fsync.
    pub can_wait: bool,
    /// Run once the batch is durable, before its events and replies go out: what the engine
    /// may do only then (the LSM engine's retention floors).
    pub on_durable: Option<Box<dyn FnOnce() + Send>>,
}

/// What readers may see: the newest durable seq of each account that logged since start-up,
/// and the newest durable message row. Rows past these are committed but not yet fsync'd.
#[derive(Default)]
pub(crate) struct Durable {
    heads: Mutex<foldhash::HashMap<AccountId, u64>>,
    message_row: AtomicI64,
    /// Set when an fsync failed: the store refuses every later write.
    pub broken: AtomicBool,
}

impl Durable {
    /// Starts from what is on disk at open: every message row up to `message_row` is durable.
    pub fn new(message_row: i64) -> Self {
        Durable {
            message_row: AtomicI64::new(message_row),
            ..Default::default()
        }
    }

    /// Before a batch commits (on the writer): an account that has not logged since start-up
    /// gets a head just below its first new event, so readers cannot see that event early.
    pub fn fence(&self, events: &[CommittedEvent]) {
        if let Ok(mut heads) = self.heads.lock() {
            for e in events {
                heads
                    .entry(e.account_id)
                    .or_insert(e.event.seq.saturating_sub(1));
            }
        }
    }

    /// After the fsync: `events`, and every message up to `message_row`, are durable.
    pub fn advance_to(&self, events: &[CommittedEvent], message_row: Option<i64>) {
        if let Ok(mut heads) = self.heads.lock() {
            for e in events {
                let head = heads.entry(e.account_id).or_default();
                *head = (*head).max(e.event.seq);
            }
        }
        if let Some(row) = message_row {
            self.message_row.fetch_max(row, Ordering::AcqRel);
        }
    }

    /// The newest seq of `account` a reader may return (`None`: every committed one). Read it
    /// after the query it caps, never before: the writer fences an account before the commit
    /// that makes its new rows visible, so a fence read afterwards covers every row the query
    /// saw, while one read before could miss an account's first fence since start-up.
    pub fn head(&self, account: AccountId) -> Option<u64> {
        self.heads.lock().ok()?.get(&account).copied()
    }

    /// Drops from `events` (read from `account`'s log, in seq order) what is not durable yet.
    pub fn keep_durable(&self, account: AccountId, events: &mut Vec<crate::pb::Event>) {
        if let Some(head) = self.head(account) {
            let keep = events.partition_point(|e| e.seq <= head);
            events.truncate(keep);
        }
    }

    /// The newest message row a reader may return.
    pub fn message_row(&self) -> i64 {
        self.message_row.load(Ordering::Acquire)
    }

    /// Where a page of messages before row `after` (`None`: from the newest) must stop: rows
    /// past the durable one are committed but not yet fsync'd, so not shown yet.
    pub fn rows_before(&self, after: Option<i64>) -> i64 {
        after
            .unwrap_or(i64::MAX)
            .min(self.message_row().saturating_add(1))
            .max(0)
    }
}

/// Runs until the writer is gone; every batch handed over is answered first. `sync` makes
/// everything the writer committed so far durable.
pub(crate) fn run(
    mut sync: impl FnMut() -> Result<(), String>,
    batches: mpsc::Receiver<Committed>,
    sink: EventSink,
    durable: Arc<Durable>,
    receipt_wait: Duration,
) {
    while let Ok(first) = batches.recv() {
        let mut waiting = vec![first];
        waiting.extend(batches.try_iter());
        wait_for_urgent(&batches, &mut waiting, receipt_wait);
        let synced = if durable.broken.load(Ordering::Acquire) {
            Err("an earlier fsync failed".to_string())
        } else {
            sync()
        };
        if let Err(e) = &synced {
            durable.broken.store(true, Ordering::Release);
            tracing::error!(error = %e, "store fsync failed; refusing writes from now on");
        }
        for batch in waiting {
            if synced.is_ok() {
                durable.advance_to(&batch.events, batch.message_row);
                if let Some(then) = batch.on_durable {
                    then();
                }
                if !batch.events.is_empty() {
                    sink(batch.events);
                }
                for (reply, result) in batch.replies {
                    let _ = reply.send(result);
                }
            } else {
                for (reply, _) in batch.replies {
                    let _ = reply.send(Err(CoreError::Unavailable(
                        "storage sync failed; the write may not be durable".into(),
                    )));
                }
            }
        }
    }
}

/// While every batch in `waiting` can wait, takes more for up to `wait`, until one that cannot
/// arrives (or the writer is gone).
fn wait_for_urgent(
    batches: &mpsc::Receiver<Committed>,
    waiting: &mut Vec<Committed>,
    wait: Duration,
) {
    if !waiting.iter().all(|b| b.can_wait) {
        return;
    }
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(next) = batches.recv_timeout(left) else {
            return;
        };
        let taken = waiting.len();
        waiting.push(next);
        waiting.extend(batches.try_iter());
        if waiting[taken..].iter().any(|b| !b.can_wait) {
            return;
        }
    }
}

/// Starts the syncer thread with `sync`, each sync timed into `timed`; returns the writer's
/// end of its queue and its handle.
pub(crate) fn start(
    mut sync: impl FnMut() -> Result<(), String> + Send + 'static,
    timed: prometheus::Histogram,
    sink: EventSink,
    durable: Arc<Durable>,
) -> CoreResult<(mpsc::SyncSender<Committed>, JoinHandle<()>)> {
    let sync = move || {
        let _timer = timed.start_timer();
        sync()
    };
    let (to_syncer, committed) = mpsc::sync_channel(SYNC_QUEUE);
    let handle = crate::sched::spawn_woken("phantom-store-syncer", move || {
        run(sync, committed, sink, durable, RECEIPT_WAIT)
    })
    .map_err(CoreError::internal)?;
    Ok((to_syncer, handle))
}

/// On a writer: passes a committed batch (`None`: nothing committed) to the syncer.
pub(crate) fn hand_over(syncer: &mpsc::SyncSender<Committed>, committed: Option<Committed>) {
    if let Some(committed) = committed
        && syncer.send(committed).is_err()
    {
        tracing::error!("store syncer is gone; writes are no longer answered");
    }
}

/// Waits for an engine's writer, then its syncer, after the job queue was closed: the writer
/// hands its last batch to the syncer and returns; the syncer answers it and returns in turn.
pub(crate) fn join(writer: &Mutex<Option<JoinHandle<()>>>, syncer: &Mutex<Option<JoinHandle<()>>>) {
    for (thread, name) in [(writer, "writer"), (syncer, "syncer")] {
        let handle = thread.lock().ok().and_then(|mut t| t.take());
        crate::sched::join(handle, &format!("store {name}"));
    }
}

/// fdatasync of the WAL. It is opened on first use (SQLite has created it by then), and its
/// directory is synced once so that the file itself cannot vanish in a crash.
pub(crate) fn sync_wal(wal: &Path, file: &mut Option<File>) -> Result<(), String> {
    let f = match file {
        Some(f) => f,
        None => {
            let opened = File::open(wal).map_err(|e| format!("open {}: {e}", wal.display()))?;
            if let Some(dir) = wal.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| format!("fsync {}: {e}", dir.display()))?;
            }
            file.insert(opened)
        }
    };
    f.sync_data()
        .map_err(|e| format!("fsync {}: {e}", wal.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn event(account: AccountId, seq: u64) -> CommittedEvent {
        CommittedEvent::whole(
            account,
            pb::Event {
                seq,
                ..Default::default()
            },
        )
    }

    fn batch(events: Vec<CommittedEvent>, message_row: Option<i64>) -> Committed {
        Committed {
            replies: Vec::new(),
            events,
            message_row,
            can_wait: false,
            on_durable: None,
        }
    }

    #[test]
    fn readers_see_only_what_was_synced() {
        let (a, b) = (AccountId::now_v7(), AccountId::now_v7());
        let d = Durable::new(10);
        // Nothing logged since start-up: no cap, every committed event is old and durable.
        assert_eq!(d.head(a), None);
        let first = batch(vec![event(a, 5), event(a, 6), event(b, 1)], Some(12));
        d.fence(&first.events);
        assert_eq!(d.head(a), Some(4));
        assert_eq!(d.head(b), Some(0));
        assert_eq!(d.message_row(), 10);
        // A later batch's fence does not lower a head already set.
        let second = batch(vec![event(a, 7)], Some(13));
        d.fence(&second.events);
        assert_eq!(d.head(a), Some(4));
        d.advance_to(&first.events, first.message_row);
        assert_eq!(
            (d.head(a), d.head(b), d.message_row()),
            (Some(6), Some(1), 12)
        );
        d.advance_to(&second.events, second.message_row);
        assert_eq!((d.head(a), d.message_row()), (Some(7), 13));
        // What a reader got is cut at the account's durable head; an account never fenced
        // keeps everything.
        let read = |account, seqs: &[u64]| {
            let mut events: Vec<pb::Event> =
                seqs.iter().map(|&s| event(account, s).event).collect();
            d.keep_durable(account, &mut events);
            events.iter().map(|e| e.seq).collect::<Vec<_>>()
        };
        d.fence(&[event(b, 2), event(b, 3)]);
        assert_eq!(read(b, &[1, 2, 3]), vec![1]);
        assert_eq!(read(AccountId::now_v7(), &[8, 9]), vec![8, 9]);
    }

    /// Runs the syncer (receipts waiting up to `wait`) over `batches`, sent in order; returns
    /// the fsyncs it made and how long each batch took to be answered.
    fn syncs_for(batches: Vec<Committed>, wait: Duration) -> (usize, Vec<Duration>) {
        let syncs = Arc::new(Mutex::new(0usize));
        let counted = syncs.clone();
        let (tx, rx) = mpsc::sync_channel(SYNC_QUEUE);
        let syncer = std::thread::spawn(move || {
            let sync = move || {
                *counted.lock().map_err(|e| e.to_string())? += 1;
                Ok(())
            };
            run(sync, rx, Box::new(|_| {}), Arc::new(Durable::new(0)), wait)
        });
        let mut answers = Vec::new();
        for mut b in batches {
            let (reply, answer) = oneshot::channel();
            b.replies.push((reply, Ok(WriteOutput::Done)));
            tx.send(b).expect("syncer running");
            answers.push((Instant::now(), answer));
        }
        let waited = answers
            .into_iter()
            .map(|(sent, answer)| {
                answer.blocking_recv().expect("answered").expect("synced");
                sent.elapsed()
            })
            .collect();
        drop(tx);
        syncer.join().expect("syncer ends");
        let n = *syncs.lock().expect("lock");
        (n, waited)
    }

    fn receipts() -> Committed {
        Committed {
            can_wait: true,
            ..batch(Vec::new(), None)
        }
    }

    #[test]
    fn receipts_share_the_next_fsync_or_get_their_own_after_the_wait() {
        let long = Duration::from_secs(30);
        // Receipts, then a send: one fsync answers both, without waiting out the wait.
        let (n, waited) = syncs_for(
            vec![receipts(), receipts(), batch(Vec::new(), Some(1))],
            long,
        );
        assert_eq!(n, 1, "the receipts rode on the send's fsync");
        assert!(waited.iter().all(|w| *w < long), "{waited:?}");
        // Receipts alone get an fsync of their own once the wait is over.
        let short = Duration::from_millis(20);
        let (n, waited) = syncs_for(vec![receipts()], short);
        assert_eq!(n, 1);
        assert!(waited[0] >= short, "answered before its fsync: {waited:?}");
        // Anything else is synced as it comes, receipts or not behind it.
        let (n, waited) = syncs_for(vec![batch(Vec::new(), Some(1))], long);
        assert_eq!(n, 1);
        assert!(waited[0] < long, "{waited:?}");
    }

    #[test]
    fn a_failed_fsync_refuses_its_batch_and_every_later_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let durable = Arc::new(Durable::new(0));
        let published = Arc::new(Mutex::new(0usize));
        let seen = published.clone();
        let sink: EventSink = Box::new(move |events| {
            if let Ok(mut n) = seen.lock() {
                *n += events.len();
            }
        });
        let (tx, rx) = mpsc::sync_channel(4);
        // No WAL file there: opening it for the fsync fails.
        let wal = dir.path().join("missing").join("phantom.db-wal");
        let d = durable.clone();
        let syncer = std::thread::spawn(move || {
            let mut file = None;
            run(move || sync_wal(&wal, &mut file), rx, sink, d, RECEIPT_WAIT)
        });
        let mut answers = Vec::new();
        for seq in 1..=2 {
            let (reply, answer) = oneshot::channel();
            let mut b = batch(vec![event(AccountId::now_v7(), seq)], Some(1));
            b.replies.push((reply, Ok(WriteOutput::Done)));
            tx.send(b).expect("syncer running");
            answers.push(answer);
        }
        drop(tx);
        syncer.join().expect("syncer ends");
        for answer in answers {
            let got = answer.blocking_recv().expect("answered");
            assert!(
                matches!(got, Err(CoreError::Unavailable(ref m)) if m.contains("sync failed")),
                "{:?}",
                got.map(|_| ())
            );
        }
        assert!(durable.broken.load(Ordering::Acquire));
        assert_eq!(*published.lock().expect("lock"), 0, "no event left");
        assert_eq!(durable.message_row(), 0);
    }
}
