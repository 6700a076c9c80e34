//! Shows why the LSM store rotates fjall's memtables itself (`src/store/lsm/memtables.rs`).
//!
//! Writes batches to five keyspaces as fast as it can, as the store's writer does, and prints
//! every two seconds how many bytes sit in the keyspaces' active memtables and how many
//! sealed memtables wait for a flush. With fjall rotating (`fjall`), its workers soon all
//! block sending into their own full queue (fjall 3.1.13): from then on nothing is rotated or
//! flushed and the active memtables grow without bound. With a thread of our own rotating
//! (`ours`, as the store does), they stay bounded.
//!
//! ```sh
//! cargo run --release --example fjall_rotation -- 1 fjall 20   # one worker, fjall rotating
//! cargo run --release --example fjall_rotation -- 2 fjall 20   # two workers
//! cargo run --release --example fjall_rotation -- 1 ours 20    # one worker, our rotation
//! ```
//!
//! Memtables are 4 MiB here (fjall's trigger) and ours rotates at 3 MiB, so that the queue
//! fills in seconds rather than minutes; the mechanism is the same at 64 and 48 MiB.

use std::time::{Duration, Instant};

use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions};

const FJALL_ROTATES_AT: u64 = 4 << 20;
const OURS_ROTATES_AT: u64 = 3 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: fjall_rotation WORKERS fjall|ours SECONDS";
    let workers: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let ours = match args.get(2).map(String::as_str) {
        Some("ours") => true,
        Some("fjall") => false,
        _ => panic!("{usage}"),
    };
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).expect(usage);

    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::builder(dir.path())
        .worker_threads(workers)
        .manual_journal_persist(true)
        .open()
        .expect("open");
    let keyspaces: Vec<Keyspace> = (0..5)
        .map(|i| {
            db.keyspace(&format!("k{i}"), || {
                KeyspaceCreateOptions::default().max_memtable_size(FJALL_ROTATES_AT)
            })
            .expect("keyspace")
        })
        .collect();
    if ours {
        let rotated = keyspaces.clone();
        std::thread::spawn(move || {
            loop {
                for ks in &rotated {
                    if ks.tree.active_memtable().size() >= OURS_ROTATES_AT {
                        ks.rotate_memtable().expect("rotate");
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }

    let start = Instant::now();
    let mut shown = start;
    let value = [7u8; 300];
    let mut batches: u64 = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        let mut batch = db.batch();
        for ks in &keyspaces {
            for j in 0..4 {
                batch.insert(ks, (batches * 4 + j).to_be_bytes(), &value[..]);
            }
        }
        batch.commit().expect("commit");
        batches += 1;
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            let active: u64 = keyspaces
                .iter()
                .map(|ks| ks.tree.active_memtable().size())
                .sum();
            let sealed: usize = keyspaces
                .iter()
                .map(|ks| ks.tree.sealed_memtable_count())
                .sum();
            println!(
                "{:5.1} s  {batches} batches  active memtables {} MiB  sealed {sealed}",
                start.elapsed().as_secs_f64(),
                active >> 20
            );
        }
    }
}
