//! Zeros written ahead of fjall's writer in its active journal, so that the syncer's fsyncs
//! overwrite blocks that already exist.
//!
//! fjall makes each journal sparse (`create_new`, then `set_len` to 64 MiB). Every fdatasync
//! of it then also allocates the blocks the group wrote into and, on ext4, writes the inode
//! apart: a second disk write per fsync. Into blocks written before, an fdatasync writes only
//! the data (`bench/disk/fsync_sparse_vs_written.py`: ~12 µs less CPU and a quarter less time
//! per sync, BENCHMARKS.md). fjall cannot be handed such a journal, so this writes zeros into
//! the active journal's holes a chunk ahead of fjall's writer; the fsync after each chunk
//! allocates it once.
//!
//! Two rules keep the journal's content what fjall wrote:
//! - zeros go only into holes (`SEEK_HOLE` / `SEEK_DATA`) inside the file's size, which read
//!   as zeros already: what the file reads never changes, so fjall's recovery reads the same.
//!   Only on ext4, whose holes leave out written pages not yet on the disk (delayed
//!   allocation), and where the saving was measured; elsewhere it does nothing. (Reading each
//!   range back first instead took 10–38 ms now and then, waiting on the file's writeback.)
//! - only the store's writer thread calls this, between its commits, and it is the one thread
//!   that commits: fjall cannot write into a hole while it is being zeroed. Anything fjall
//!   writes there later simply overwrites the zeros.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::journal;

/// Zeros written at a time: at ~10 KiB of journal per fsync, one fsync in six or so carries a
/// chunk and its allocation, the others none.
const CHUNK: u64 = 64 << 10;
/// How near the end of the zeros fjall's writer may come before the next chunk is written.
const MARGIN: u64 = 32 << 10;
/// The file system's block, the unit of holes.
const BLOCK: u64 = 4096;
/// Calls between two looks for a journal newer than the active one. Each look is a `statx` of
/// the next journal's path, and fjall starts a journal only at a flush once the active one
/// passes 64 MB (every ~100,000 sends); until the next look, the new journal's fsyncs
/// allocate, as they did before this prefill.
const LOOK_EVERY: u32 = 8;
/// A chunk of zeros to write from: static, so it is neither allocated nor zeroed per chunk.
static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// The writer's zeros ahead in the active journal.
pub(crate) struct Prefill {
    dir: PathBuf,
    /// The active journal's id, a descriptor of it, and where the zeros written in it end.
    active: Option<(u64, File, u64)>,
    /// Set once anything failed: this is a saving, never worth failing a write for.
    off: bool,
    /// Calls since the last look for a newer journal (`LOOK_EVERY`).
    since_look: u32,
    /// The block `written_at` reads into, kept rather than zeroed on the stack per group.
    block: Box<[u8; BLOCK as usize]>,
}

impl Prefill {
    /// For the database in `dir`; nothing is read or written until `ahead`.
    pub fn new(dir: &Path) -> Self {
        Prefill {
            dir: dir.to_path_buf(),
            active: None,
            off: false,
            since_look: 0,
            block: Box::new([0; BLOCK as usize]),
        }
    }

    /// Called by the writer thread after a group's journal bytes went to the OS: writes the
    /// next chunk of zeros once fjall's writer has come within `MARGIN` of their end.
    pub fn ahead(&mut self) {
        if self.off {
            return;
        }
        if let Err(e) = self.try_ahead() {
            tracing::warn!(error = %e, "journal prefill stopped (fsyncs will allocate)");
            self.off = true;
            self.active = None;
        }
    }

    fn try_ahead(&mut self) -> io::Result<()> {
        let known = self.active.as_ref().map(|(id, _, _)| *id);
        self.since_look += 1;
        let newest = match known {
            None => journal::newest(&self.dir),
            Some(_) if self.since_look < LOOK_EVERY => None,
            Some(id) => {
                self.since_look = 0;
                journal::newer_than(&self.dir, id)
            }
        };
        if let Some(id) = newest {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(journal::path(&self.dir, id))?;
            if !on_ext4(&file)? {
                self.off = true;
                return Ok(());
            }
            self.active = Some((id, file, 0));
        }
        let Some((_, file, zeroed)) = self.active.as_mut() else {
            return Ok(());
        };
        let at = zeroed.saturating_sub(MARGIN) / BLOCK * BLOCK;
        if *zeroed > 0 && !written_at(file, at, &mut self.block)? {
            return Ok(());
        }
        *zeroed = zero_holes(file, *zeroed)?;
        Ok(())
    }
}

/// Whether `file` is on ext4 (`EXT4_SUPER_MAGIC`, shared with ext2 and ext3).
fn on_ext4(file: &File) -> io::Result<bool> {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the struct it is given for a descriptor this File owns.
    if unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so the struct is filled.
    let fs = unsafe { fs.assume_init() };
    Ok(fs.f_type == 0xEF53)
}

/// Whether the block at `at` holds anything but zeros: a journal's entries never fill a block
/// with zeros, so fjall's writer has reached it.
fn written_at(file: &File, at: u64, block: &mut [u8; BLOCK as usize]) -> io::Result<bool> {
    let n = file.read_at(block, at)?;
    // The OR of every byte, which the compiler does 32 bytes at a time: the usual answer is
    // no, read to the block's end, and `any` went a byte at a time (1.4-2% of a send's
    // instructions, checked after every group; BENCHMARKS.md, forty-sixth session).
    Ok(block[..n].iter().fold(0, |all, &b| all | b) != 0)
}

/// Writes zeros into the holes of up to a `CHUNK` from the first hole at or after `from`,
/// never past the file's size or into data; returns where the zeros end.
fn zero_holes(file: &File, from: u64) -> io::Result<u64> {
    let size = file.metadata()?.len();
    let start = seek(file, from, libc::SEEK_HOLE)?.unwrap_or(size);
    let end = (start + CHUNK).min(size);
    if start >= end {
        return Ok(start.max(from));
    }
    let end = seek(file, start, libc::SEEK_DATA)?.map_or(end, |data| data.min(end));
    file.write_all_at(&ZEROS[..(end - start) as usize], start)?;
    Ok(end)
}

/// `lseek` to the next hole or data at or after `from`; `None` when there is none (`ENXIO`).
fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(from).map_err(io::Error::other)?;
    // SAFETY: lseek on a descriptor this File owns; only its offset changes, and reads and
    // writes here are positioned (`read_at`, `write_all_at`), not at it.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};

    /// Blocks of `path` allocated on disk.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn zeros_ahead_of_fjall_without_changing_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path())
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let ks = db.keyspace("k", KeyspaceCreateOptions::default).unwrap();
        let mut prefill = Prefill::new(dir.path());
        let id = journal::newest(dir.path()).unwrap();
        let jnl = journal::path(dir.path(), id);
        // Groups of writes as the writer makes them, each followed by the prefill; far more
        // than one chunk in all, so that several chunks are written behind fjall's writer.
        let value = vec![7u8; 900];
        for i in 0u32..600 {
            ks.insert(i.to_be_bytes(), &value).unwrap();
            db.persist(PersistMode::Buffer).unwrap();
            prefill.ahead();
        }
        if !on_ext4(&File::open(&jnl).unwrap()).unwrap() {
            // Elsewhere the prefill does nothing, by design.
            assert!(prefill.off && prefill.active.is_none());
            return;
        }
        assert!(!prefill.off, "the prefill failed");
        let (_, _, zeroed) = prefill.active.as_ref().unwrap();
        // The zeros run ahead of fjall's last write, and were written (the file is sparse
        // beyond them: 64 MiB long, with far less allocated).
        let file = File::open(&jnl).unwrap();
        let mut block = [0u8; BLOCK as usize];
        assert!(written_at(&file, 600 * 900 / BLOCK * BLOCK, &mut block).unwrap());
        assert!(*zeroed > 600 * 900, "zeroed to {zeroed}");
        assert!(allocated(&jnl) >= *zeroed / BLOCK * BLOCK);
        assert!(allocated(&jnl) < 16 << 20);
        drop((ks, db));
        // What fjall wrote reads back whole after a restart (recovery through the zeros).
        let db = Database::builder(dir.path()).open().unwrap();
        let ks = db.keyspace("k", KeyspaceCreateOptions::default).unwrap();
        for i in 0u32..600 {
            assert_eq!(
                ks.get(i.to_be_bytes()).unwrap().as_deref(),
                Some(&value[..])
            );
        }
    }

    /// A journal fjall starts (past 64 MB of journal, at a flush) is found within
    /// `LOOK_EVERY` calls, not looked for on every one, and zeroed ahead from then on.
    #[test]
    fn follows_a_new_journal_within_a_few_calls() {
        let dir = tempfile::tempdir().unwrap();
        // Journals as fjall makes them: numbered in turn, sparse, 64 MiB long.
        let start = |id: u64| {
            let f = File::create_new(journal::path(dir.path(), id)).unwrap();
            f.set_len(64 << 20).unwrap();
        };
        let mut prefill = Prefill::new(dir.path());
        start(1);
        prefill.ahead();
        if prefill.off {
            return; // Elsewhere than on ext4 the prefill does nothing, by design.
        }
        let active = |p: &Prefill| p.active.as_ref().map(|(id, _, zeroed)| (*id, *zeroed > 0));
        assert_eq!(active(&prefill), Some((1, true)));
        start(2);
        prefill.ahead();
        assert_eq!(active(&prefill), Some((1, true)), "not looked for yet");
        for _ in 2..LOOK_EVERY {
            prefill.ahead();
        }
        assert_eq!(active(&prefill), Some((2, true)), "found and zeroed ahead");
    }

    /// One byte anywhere in a block is fjall's writer there; zeros and a hole are not.
    #[test]
    fn a_block_is_written_if_any_byte_is_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("f"))
            .unwrap();
        file.set_len(4 * BLOCK).unwrap();
        file.write_all_at(&[0u8; BLOCK as usize], BLOCK).unwrap();
        file.write_all_at(&[1], 3 * BLOCK - 1).unwrap();
        file.write_all_at(&[1], 3 * BLOCK).unwrap();
        let mut buf = [0u8; BLOCK as usize];
        let mut written = |block: u64| written_at(&file, block * BLOCK, &mut buf).unwrap();
        assert_eq!([0, 1, 2, 3].map(&mut written), [false, false, true, true]);
        assert!(!written(4), "past the end");
        // The buffer is reused: what an earlier read left past a short read is not looked at.
        file.set_len(4 * BLOCK + 100).unwrap();
        let mut buf = [0u8; BLOCK as usize];
        assert!(written_at(&file, 2 * BLOCK, &mut buf).unwrap());
        assert_eq!(buf[BLOCK as usize - 1], 1);
        assert!(
            !written_at(&file, 4 * BLOCK, &mut buf).unwrap(),
            "a short block of zeros"
        );
    }

    #[test]
    fn writes_nothing_into_data_or_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(3 * BLOCK).unwrap();
        file.write_all_at(&[9u8; 10], 0).unwrap();
        file.write_all_at(&[8u8; 10], 2 * BLOCK).unwrap();
        // The hole between the two blocks of data is zeroed, not the data after it.
        assert_eq!(zero_holes(&file, 0).unwrap(), 2 * BLOCK);
        let mut got = vec![0u8; 3 * BLOCK as usize];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..10], &[9u8; 10]);
        assert_eq!(&got[2 * BLOCK as usize..][..10], &[8u8; 10]);
        // No hole left before the end: nothing more, and the file is no longer.
        assert_eq!(zero_holes(&file, 2 * BLOCK).unwrap(), 3 * BLOCK);
        assert_eq!(file.metadata().unwrap().len(), 3 * BLOCK);
    }
}
