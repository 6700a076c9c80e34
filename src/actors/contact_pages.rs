//! `ContactPages`: encoded GetContacts pages that the `ContactsActor` publishes for readers.
//!
//! A contact list is read far more often than it changes, and building a page (a view per
//! contact with live presence, then encoding it) was most of a GetContacts call, with a round
//! trip to the actor's thread on top. The actor stays the only one that builds and changes
//! pages: it publishes each page it builds here, and drops an owner's pages before it
//! acknowledges or announces anything that changes what the owner would see (a contact added,
//! renamed or removed; a contact's presence or status text). A reader that finds a page sends
//! its bytes; one that finds none asks the actor, as every read did before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use dashmap::DashMap;

use crate::core::{AccountId, PageRequest};

/// Pages kept per owner; a client pages through with one `page_size`, so a few are plenty.
const PAGES_PER_OWNER: usize = 4;

/// Most bytes of pages kept in all. When a new page would pass it, every page is dropped and
/// the working set publishes itself again, so memory stays bounded however many accounts read.
const DEFAULT_BUDGET: usize = 64 << 20;

/// Published pages: owner → (page asked for, encoded `GetContactsResponse`), newest last.
pub struct ContactPages {
    pages: DashMap<AccountId, Arc<[(PageRequest, Bytes)]>>,
    /// Bytes of every page held (written on the actor's thread only).
    bytes: AtomicUsize,
    budget: usize,
}

impl Default for ContactPages {
    fn default() -> Self {
        ContactPages::with_budget(DEFAULT_BUDGET)
    }
}

fn size(pages: &[(PageRequest, Bytes)]) -> usize {
    pages.iter().map(|(_, b)| b.len()).sum()
}

impl ContactPages {
    /// Pages kept up to `budget` bytes in all.
    pub fn with_budget(budget: usize) -> Self {
        ContactPages {
            pages: DashMap::new(),
            bytes: AtomicUsize::new(0),
            budget,
        }
    }

    /// The published page, if the owner's list has not changed since it was built.
    pub fn get(&self, owner: AccountId, page: PageRequest) -> Option<Bytes> {
        // Clone the Arc and let the shard's lock go before searching.
        let pages = self.pages.get(&owner)?.value().clone();
        pages
            .iter()
            .find(|(p, _)| *p == page)
            .map(|(_, body)| body.clone())
    }

    /// Publishes a page just built from the actor's current state (the actor's thread only).
    pub(super) fn publish(&self, owner: AccountId, page: PageRequest, body: Bytes) {
        if body.len() > self.budget {
            return;
        }
        if self.bytes.load(Ordering::Relaxed) + body.len() > self.budget {
            self.pages.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
        let mut entry = self.pages.entry(owner).or_insert_with(|| Arc::new([]));
        let before = size(entry.value());
        let kept = entry.value().iter().filter(|(p, _)| *p != page);
        let skip = kept.clone().count().saturating_sub(PAGES_PER_OWNER - 1);
        let next: Arc<[_]> = kept
            .skip(skip)
            .cloned()
            .chain(std::iter::once((page, body)))
            .collect();
        let after = size(&next);
        *entry.value_mut() = next;
        drop(entry);
        // Only the actor's thread writes, so load-then-store does not race.
        let total = self.bytes.load(Ordering::Relaxed) + after - before;
        self.bytes.store(total, Ordering::Relaxed);
    }

    /// Forgets an owner's pages (the actor's thread only, before the change is visible).
    pub(super) fn invalidate(&self, owner: AccountId) {
        if let Some((_, pages)) = self.pages.remove(&owner) {
            let total = self
                .bytes
                .load(Ordering::Relaxed)
                .saturating_sub(size(&pages));
            self.bytes.store(total, Ordering::Relaxed);
        }
    }

    /// Bytes of pages held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Owners with published pages (for tests and stats).
    pub fn owners(&self) -> usize {
        self.pages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(size: usize, after: Option<i64>) -> PageRequest {
        PageRequest { size, after }
    }

    #[test]
    fn keeps_the_newest_pages_per_owner_and_forgets_them_on_invalidate() {
        let pages = ContactPages::default();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        for i in 0..6 {
            pages.publish(a, page(10, Some(i)), Bytes::from(vec![i as u8]));
        }
        pages.publish(b, page(10, None), Bytes::from_static(b"b"));
        assert_eq!(
            pages.get(a, page(10, Some(0))),
            None,
            "oldest pages are dropped"
        );
        assert_eq!(pages.get(a, page(10, Some(5))), Some(Bytes::from(vec![5])));
        assert_eq!(pages.get(a, page(10, Some(2))), Some(Bytes::from(vec![2])));
        // Publishing the same page again replaces it, not adds a copy.
        pages.publish(a, page(10, Some(5)), Bytes::from_static(b"new"));
        assert_eq!(
            pages.get(a, page(10, Some(5))),
            Some(Bytes::from_static(b"new"))
        );
        assert_eq!(pages.get(a, page(10, Some(2))), Some(Bytes::from(vec![2])));
        pages.invalidate(a);
        assert_eq!(pages.get(a, page(10, Some(5))), None);
        assert_eq!(pages.get(b, page(10, None)), Some(Bytes::from_static(b"b")));
        assert_eq!(pages.owners(), 1);
        assert_eq!(pages.bytes(), 1);
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let pages = ContactPages::with_budget(100);
        let body = || Bytes::from(vec![0u8; 30]);
        let owners: Vec<_> = (0..5).map(|_| uuid::Uuid::new_v4()).collect();
        for (i, owner) in owners.iter().enumerate() {
            pages.publish(*owner, page(10, None), body());
            assert!(pages.bytes() <= 100, "after {i}: {}", pages.bytes());
        }
        // 30 + 30 + 30 fit; the fourth page dropped everything and started again.
        assert_eq!(pages.owners(), 2);
        assert_eq!(pages.bytes(), 60);
        assert!(pages.get(owners[4], page(10, None)).is_some());
        assert!(pages.get(owners[0], page(10, None)).is_none());
        // Replacing a page counts its size once.
        pages.publish(owners[4], page(10, None), body());
        assert_eq!(pages.bytes(), 60);
        pages.invalidate(owners[4]);
        assert_eq!(pages.bytes(), 30);
        // A page larger than the budget is not kept at all.
        pages.publish(owners[0], page(10, None), Bytes::from(vec![0u8; 101]));
        assert!(pages.get(owners[0], page(10, None)).is_none());
    }
}
