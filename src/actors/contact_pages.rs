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

use bytes::Bytes;
use dashmap::DashMap;

use crate::core::{AccountId, PageRequest};

/// Pages kept per owner; a client pages through with one `page_size`, so a few are plenty.
const PAGES_PER_OWNER: usize = 4;

/// Published pages: owner → (page asked for, encoded `GetContactsResponse`), newest last.
#[derive(Default)]
pub struct ContactPages {
    pages: DashMap<AccountId, Arc<[(PageRequest, Bytes)]>>,
}

impl ContactPages {
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
        let mut entry = self.pages.entry(owner).or_insert_with(|| Arc::new([]));
        let kept = entry.value().iter().filter(|(p, _)| *p != page);
        let skip = kept.clone().count().saturating_sub(PAGES_PER_OWNER - 1);
        let next: Arc<[_]> = kept
            .skip(skip)
            .cloned()
            .chain(std::iter::once((page, body)))
            .collect();
        *entry.value_mut() = next;
    }

    /// Forgets an owner's pages (the actor's thread only, before the change is visible).
    pub(super) fn invalidate(&self, owner: AccountId) {
        self.pages.remove(&owner);
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
    }
}
