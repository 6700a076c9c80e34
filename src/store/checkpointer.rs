//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so every
//! write queued behind that commit waits for ~1,000 pages to be copied into the database and
//! fsync'd: that was most of `e2e`'s p99 (BENCHMARKS.md). Here the writer's WAL hook only
//! nudges a thread of its own, which checkpoints on its own connection (PASSIVE: it never
//! blocks the writer) while commits go on.
//!
//! A PASSIVE checkpoint copies what was in the WAL when it began; under continuous writes new
//! frames keep arriving, the WAL is never wholly copied and SQLite cannot start it over. So
//! when the WAL reaches four times the threshold the writer checkpoints itself, between
//! commits: by then the background thread has copied nearly everything, the rest is short,
//! and the next commit starts the WAL from the beginning. The WAL stays bounded.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use crate::core::stats::StoreStats;
use crate::core::{CoreError, CoreResult};

/// Starts the checkpoint thread for the database at `path` and hooks `writer` to it: a
/// background checkpoint once the WAL holds `pages` pages, one on the writer at four times
/// that. The thread ends when `writer` is dropped.
pub(crate) fn start(
    path: &Path,
    writer: &mut Connection,
    pages: u32,
    stats: &StoreStats,
) -> CoreResult<()> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A checkpoint fsyncs the WAL before copying it and the database after; never skip those.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // One pending nudge is enough: a checkpoint copies everything committed when it starts.
    let (nudge, nudged) = mpsc::sync_channel::<()>(1);
    let background = stats.checkpoints.with_label_values(&["background"]);
    std::thread::Builder::new()
        .name("phantom-store-checkpointer".into())
        .spawn(move || {
            while nudged.recv().is_ok() {
                match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                    Ok(_) => background.inc(),
                    // SQLITE_BUSY ("database is locked"): another checkpoint holds the lock,
                    // which here is the writer's own at four times the threshold (SQLite's
                    // sqlite3_wal_checkpoint_v2 docs). That one copies the WAL; the next nudge
                    // tries again. Not a failure.
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        tracing::debug!("background WAL checkpoint skipped: one is running");
                    }
                    Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
                }
            }
        })
        .map_err(CoreError::internal)?;
    let background_at = i32::try_from(pages).unwrap_or(i32::MAX);
    let inline_at = background_at.saturating_mul(4);
    let inline = stats.checkpoints.with_label_values(&["inline"]);
    let (wal_pages, written) = (stats.wal_pages.clone(), stats.wal_pages_written.clone());
    let mut last = 0i32;
    // Replaces SQLite's automatic checkpoint (the two share this hook).
    writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: i32| {
        // After the WAL starts over, a commit's pages count from zero.
        let appended = if frames >= last {
            frames - last
        } else {
            frames
        };
        last = frames;
        written.inc_by(appended.unsigned_abs().into());
        wal_pages.set(i64::from(frames));
        if frames >= inline_at {
            // An error here would be reported as the commit's, which has already happened;
            // a checkpoint that could not run (the background one holds it) is retried at the
            // next commit.
            if wal.checkpoint_v2(CheckpointMode::PASSIVE).is_ok() {
                inline.inc();
            }
        } else if frames >= background_at {
            let _ = nudge.try_send(());
        }
        Ok(())
    }))?;
    Ok(())
}
