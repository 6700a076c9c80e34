//! The fsync of fjall's journal on the syncer thread, outside fjall's journal lock.
//!
//! `Database::persist(SyncData)` holds the journal writer's lock while the disk flushes, so the
//! writer could not commit the next group meanwhile. Instead the writer hands its group's bytes
//! to the OS (`PersistMode::Buffer`, under the lock, no disk wait) and this syncs the file they
//! went to through a descriptor of its own. fjall names journals `<id>.jnl` in the database
//! folder, the highest id being the active one, and fsyncs a journal before it seals it and
//! creates the next (`journal/writer.rs`, `rotate`). So syncing the newest journal covers every
//! byte written before the sync began: bytes in an older journal were synced when it was sealed.
//! Where no journal of that shape is found, the sync falls back to fjall's own (under its lock).

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use fjall::{Database, PersistMode};

/// The syncer's handle on the active journal.
pub(crate) struct JournalSync {
    db: Database,
    dir: PathBuf,
    /// The newest journal seen, and a descriptor of it once opened.
    active: Option<(u64, Option<File>)>,
}

impl JournalSync {
    /// Finds the active journal of the database in `dir`.
    pub fn new(db: Database, dir: &Path) -> Self {
        JournalSync {
            db,
            dir: dir.to_path_buf(),
            active: newest(dir).map(|id| (id, None)),
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        path(&self.dir, id)
    }

    /// Makes everything written to the journal so far durable.
    pub fn sync(&mut self) -> Result<(), String> {
        let Some((mut id, mut file)) = self.active.take() else {
            return self.sync_locked();
        };
        // Journals sealed since the last sync were fsync'd when sealed: only the newest needs it.
        if let Some(newer) = newer_than(&self.dir, id) {
            id = newer;
            file = None;
        }
        let path = self.path(id);
        let f = match file {
            Some(f) => f,
            None => match File::open(&path) {
                Ok(f) => f,
                // Not where fjall is known to keep it: its own sync, under its lock.
                Err(e) if e.kind() == ErrorKind::NotFound => return self.sync_locked(),
                Err(e) => return Err(format!("open {}: {e}", path.display())),
            },
        };
        let synced = f
            .sync_data()
            .map_err(|e| format!("fsync {}: {e}", path.display()));
        self.active = Some((id, Some(f)));
        synced
    }

    fn sync_locked(&self) -> Result<(), String> {
        self.db
            .persist(PersistMode::SyncData)
            .map_err(|e| format!("journal sync: {e}"))
    }
}

/// The newest journal fjall has made in `dir`, by name.
pub(super) fn newest(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".jnl")?
                    .parse()
                    .ok()
            })
            .max()
    })
}

/// The newest journal after `id`, if fjall has made one since (journals are numbered in turn).
pub(super) fn newer_than(dir: &Path, id: u64) -> Option<u64> {
    let mut newest = id;
    while path(dir, newest + 1).exists() {
        newest += 1;
    }
    (newest > id).then_some(newest)
}

/// Journal `id`'s file in `dir`.
pub(super) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.jnl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_the_active_journal_through_its_own_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path())
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let ks = db
            .keyspace("k", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        ks.insert("a", "b").unwrap();
        db.persist(PersistMode::Buffer).unwrap();
        let mut sync = JournalSync::new(db.clone(), dir.path());
        sync.sync().unwrap();
        // Found fjall's journal where it is known to be, and kept a descriptor of it: the sync
        // did not fall back to fjall's own under its lock.
        let (id, opened) = sync
            .active
            .as_ref()
            .map(|(id, f)| (*id, f.is_some()))
            .unwrap();
        assert!(opened);
        assert!(sync.path(id).exists());
        // A newer journal (as after a rotation) is followed.
        std::fs::write(sync.path(id + 1), b"").unwrap();
        sync.sync().unwrap();
        assert_eq!(sync.active.as_ref().map(|a| a.0), Some(id + 1));
    }

    #[test]
    fn without_a_journal_file_it_falls_back_to_fjall_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let mut sync = JournalSync::new(db, elsewhere.path());
        assert!(sync.active.is_none());
        sync.sync().unwrap();
    }
}
