//! `ContactsActor`: owns contacts (a cache over the store), every account's presence, and the
//! reverse index "who has X as a contact" that presence fan-out needs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use prost::Message as _;

use super::bus::{Ephemeral, EventBusActor, PresenceChanged};
use super::contact_pages::ContactPages;
use crate::core::events::{
    EffectivePresence, account_view, contact_view, new_event, status_changed,
};
use crate::core::time::now_micros;
use crate::core::{
    AccountId, AccountRecord, ContactRecord, CoreError, CoreResult, Page, PageRequest,
    PresenceStatus,
};
use crate::pb::{self, event::Kind};
use crate::store::Store;

type Reply<T> = ResponseActFuture<ContactsActor, CoreResult<T>>;

fn fail<T: 'static>(e: CoreError) -> Reply<T> {
    Box::pin(actix::fut::ready(Err(e)))
}

fn not_a_contact() -> CoreError {
    CoreError::not_found("contact_id", "not one of your contacts")
}

/// The contacts and presence authority.
pub struct ContactsActor {
    store: Arc<dyn Store>,
    bus: Addr<EventBusActor>,
    accounts: HashMap<AccountId, AccountRecord>,
    by_handle: HashMap<String, AccountId>,
    /// owner → (row → contact), rows in insertion order for paging.
    lists: HashMap<AccountId, BTreeMap<i64, ContactRecord>>,
    /// (owner, peer) → row.
    rows: HashMap<(AccountId, AccountId), i64>,
    /// peer → owners that have it as a contact.
    watchers: HashMap<AccountId, HashSet<AccountId>>,
    online: HashSet<AccountId>,
    /// Pages published for readers; dropped for an owner whenever what it would see changes.
    pages: Arc<ContactPages>,
}

impl ContactsActor {
    /// Builds the cache from the store's accounts and contacts; publishes pages to `pages`.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Addr<EventBusActor>,
        pages: Arc<ContactPages>,
        accounts: Vec<AccountRecord>,
        contacts: Vec<ContactRecord>,
    ) -> Self {
        let mut actor = ContactsActor {
            store,
            bus,
            accounts: HashMap::new(),
            by_handle: HashMap::new(),
            lists: HashMap::new(),
            rows: HashMap::new(),
            watchers: HashMap::new(),
            online: HashSet::new(),
            pages,
        };
        for a in accounts {
            actor.add_account(a);
        }
        for c in contacts {
            actor.insert_contact(c);
        }
        actor
    }

    fn add_account(&mut self, a: AccountRecord) {
        self.by_handle.insert(a.handle.clone(), a.id);
        self.accounts.insert(a.id, a);
    }

    fn insert_contact(&mut self, c: ContactRecord) {
        self.pages.invalidate(c.owner);
        self.rows.insert((c.owner, c.peer), c.row);
        self.watchers.entry(c.peer).or_default().insert(c.owner);
        self.lists.entry(c.owner).or_default().insert(c.row, c);
    }

    fn remove_contact(&mut self, owner: AccountId, peer: AccountId) {
        self.pages.invalidate(owner);
        if let Some(row) = self.rows.remove(&(owner, peer))
            && let Some(list) = self.lists.get_mut(&owner)
        {
            list.remove(&row);
        }
        if let Some(w) = self.watchers.get_mut(&peer) {
            w.remove(&owner);
        }
    }

    fn contact(&self, owner: AccountId, peer: AccountId) -> Option<&ContactRecord> {
        let row = self.rows.get(&(owner, peer))?;
        self.lists.get(&owner)?.get(row)
    }

    fn presence(&self, id: AccountId) -> Option<(&AccountRecord, EffectivePresence)> {
        let a = self.accounts.get(&id)?;
        Some((a, EffectivePresence::of(a, self.online.contains(&id))))
    }

    fn view(&self, c: &ContactRecord) -> CoreResult<pb::Contact> {
        let (peer, p) = self
            .presence(c.peer)
            .ok_or_else(|| CoreError::Internal(format!("contact {} has no account", c.peer)))?;
        Ok(contact_view(c, peer, p))
    }

    /// Runs `change` on an account and tells its watchers if what they see changed.
    fn change_presence(
        &mut self,
        id: AccountId,
        change: impl FnOnce(&mut AccountRecord, &mut HashSet<AccountId>),
    ) {
        let Some((before_text, before)) =
            self.presence(id).map(|(a, p)| (a.status_text.clone(), p))
        else {
            return;
        };
        let mut online = std::mem::take(&mut self.online);
        if let Some(a) = self.accounts.get_mut(&id) {
            change(a, &mut online);
        }
        self.online = online;
        let Some((rec, after)) = self.presence(id) else {
            return;
        };
        // Every owner's pages go, whatever changed (last_seen moves even when the status
        // others see does not), before the change is announced.
        for owner in self.watchers.get(&id).into_iter().flatten() {
            self.pages.invalidate(*owner);
        }
        if after != before || rec.status_text != before_text {
            let event = status_changed(rec, after);
            let to: Vec<AccountId> = self
                .watchers
                .get(&id)
                .map(|w| w.iter().copied().collect())
                .unwrap_or_default();
            if !to.is_empty() {
                self.bus.do_send(Ephemeral { to, event });
            }
        }
    }
}

impl Actor for ContactsActor {
    type Context = Context<Self>;
}

/// A new account, for the cache.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AccountCreated(pub AccountRecord);

impl Handler<AccountCreated> for ContactsActor {
    type Result = ();
    fn handle(&mut self, msg: AccountCreated, _: &mut Context<Self>) {
        self.add_account(msg.0);
    }
}

impl Handler<PresenceChanged> for ContactsActor {
    type Result = ();
    fn handle(&mut self, msg: PresenceChanged, ctx: &mut Context<Self>) {
        let now = now_micros();
        self.change_presence(msg.account, |a, online| {
            if msg.online {
                online.insert(a.id);
            } else {
                online.remove(&a.id);
                a.last_seen = Some(now);
            }
        });
        if !msg.online {
            let account = msg.account;
            ctx.spawn(self.store.set_last_seen(account, now).into_actor(self).map(
                move |res, _, _| {
                    if let Err(e) = res {
                        tracing::warn!(%account, error = %e, "could not persist last_seen");
                    }
                },
            ));
        }
    }
}

/// A page of an owner's contacts with live presence, as an encoded `GetContactsResponse`
/// (also published to `ContactPages` for the reads that follow).
#[derive(Message)]
#[rtype(result = "CoreResult<Bytes>")]
pub struct GetContacts {
    /// Whose list.
    pub owner: AccountId,
    /// Which page.
    pub page: PageRequest,
}

impl ContactsActor {
    fn page(&self, owner: AccountId, page: PageRequest) -> CoreResult<Page<pb::Contact>> {
        let Some(list) = self.lists.get(&owner) else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        let start = page.after.map_or(i64::MIN, |r| r.saturating_add(1));
        let mut rows = list.range(start..);
        let mut items = Vec::with_capacity(page.size.min(list.len()));
        let mut last = None;
        for (row, c) in rows.by_ref().take(page.size) {
            items.push(self.view(c)?);
            last = Some(*row);
        }
        let next = rows.next().and(last);
        Ok(Page { items, next })
    }
}

impl Handler<GetContacts> for ContactsActor {
    type Result = CoreResult<Bytes>;
    fn handle(&mut self, msg: GetContacts, _: &mut Context<Self>) -> Self::Result {
        let (contacts, next_page_token) = self.page(msg.owner, msg.page)?.into_parts();
        let body = Bytes::from(
            crate::wire::GetContactsResponse::new(contacts, next_page_token).encode_to_vec(),
        );
        self.pages.publish(msg.owner, msg.page, body.clone());
        Ok(body)
    }
}

/// Adds a contact by handle.
#[derive(Message)]
#[rtype(result = "CoreResult<pb::Contact>")]
pub struct AddContact {
    /// Whose list.
    pub owner: AccountId,
    /// The peer's handle, already normalised.
    pub handle: String,
    /// Alias; empty for the peer's own name.
    pub alias: String,
}

impl Handler<AddContact> for ContactsActor {
    type Result = Reply<pb::Contact>;
    fn handle(&mut self, msg: AddContact, _: &mut Context<Self>) -> Self::Result {
        let Some(&peer) = self.by_handle.get(&msg.handle) else {
            return fail(CoreError::not_found(
                "handle",
                format!("no account has handle {:?}", msg.handle),
            ));
        };
        if peer == msg.owner {
            return fail(CoreError::invalid(
                "handle",
                "you cannot add yourself as a contact",
            ));
        }
        if self.rows.contains_key(&(msg.owner, peer)) {
            return fail(CoreError::exists(
                "handle",
                format!("{:?} is already a contact", msg.handle),
            ));
        }
        let record = ContactRecord {
            owner: msg.owner,
            peer,
            alias: msg.alias,
            added_at: now_micros(),
            row: 0,
        };
        let view = match self.view(&record) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        let event = new_event(Kind::ContactAdded(pb::ContactAdded {
            contact: Some(view.clone()),
        }));
        Box::pin(
            self.store
                .add_contact(record, event)
                .into_actor(self)
                .map(move |res, act, _| {
                    act.insert_contact(res?);
                    Ok(view)
                }),
        )
    }
}

/// Renames a contact.
#[derive(Message)]
#[rtype(result = "CoreResult<pb::Contact>")]
pub struct UpdateContact {
    /// Whose list.
    pub owner: AccountId,
    /// The peer.
    pub peer: AccountId,
    /// New alias; empty resets it.
    pub alias: String,
}

impl Handler<UpdateContact> for ContactsActor {
    type Result = Reply<pb::Contact>;
    fn handle(&mut self, msg: UpdateContact, _: &mut Context<Self>) -> Self::Result {
        let Some(current) = self.contact(msg.owner, msg.peer) else {
            return fail(not_a_contact());
        };
        let mut updated = current.clone();
        updated.alias = msg.alias.clone();
        let view = match self.view(&updated) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        let event = new_event(Kind::ContactUpdated(pb::ContactUpdated {
            contact: Some(view.clone()),
        }));
        Box::pin(
            self.store
                .update_contact(msg.owner, msg.peer, msg.alias, event)
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.insert_contact(updated);
                    Ok(view)
                }),
        )
    }
}

/// Removes a contact.
#[derive(Message)]
#[rtype(result = "CoreResult<()>")]
pub struct RemoveContact {
    /// Whose list.
    pub owner: AccountId,
    /// The peer.
    pub peer: AccountId,
}

impl Handler<RemoveContact> for ContactsActor {
    type Result = Reply<()>;
    fn handle(&mut self, msg: RemoveContact, _: &mut Context<Self>) -> Self::Result {
        if self.contact(msg.owner, msg.peer).is_none() {
            return fail(not_a_contact());
        }
        let event = new_event(Kind::ContactRemoved(pb::ContactRemoved {
            contact_id: msg.peer.to_string(),
        }));
        Box::pin(
            self.store
                .remove_contact(msg.owner, msg.peer, event)
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.remove_contact(msg.owner, msg.peer);
                    Ok(())
                }),
        )
    }
}

/// The caller's own account and presence.
#[derive(Message)]
#[rtype(result = "CoreResult<pb::GetProfileResponse>")]
pub struct GetProfile(pub AccountId);

impl Handler<GetProfile> for ContactsActor {
    type Result = CoreResult<pb::GetProfileResponse>;
    fn handle(&mut self, msg: GetProfile, _: &mut Context<Self>) -> Self::Result {
        let (a, p) = self.presence(msg.0).ok_or_else(|| {
            CoreError::Unauthenticated("the token's account no longer exists".into())
        })?;
        Ok(pb::GetProfileResponse {
            account: Some(account_view(a)),
            status: p.status as i32,
            status_text: a.status_text.clone(),
        })
    }
}

/// Sets an account's chosen status and text.
#[derive(Message)]
#[rtype(result = "CoreResult<()>")]
pub struct SetStatus {
    /// Whose.
    pub account: AccountId,
    /// Chosen presence (not UNSPECIFIED).
    pub status: PresenceStatus,
    /// Status text.
    pub text: String,
}

impl Handler<SetStatus> for ContactsActor {
    type Result = Reply<()>;
    fn handle(&mut self, msg: SetStatus, _: &mut Context<Self>) -> Self::Result {
        let SetStatus {
            account,
            status,
            text,
        } = msg;
        Box::pin(
            self.store
                .set_status(account, status, text.clone())
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.change_presence(account, |a, _| {
                        a.status = status;
                        a.status_text = text;
                    });
                    Ok(())
                }),
        )
    }
}

/// A typing indicator from one account to another (ephemeral).
#[derive(Message)]
#[rtype(result = "CoreResult<()>")]
pub struct Typing {
    /// Who types.
    pub from: AccountId,
    /// Who sees it.
    pub to: AccountId,
    /// Typing or stopped.
    pub typing: bool,
}

impl Handler<Typing> for ContactsActor {
    type Result = CoreResult<()>;
    fn handle(&mut self, msg: Typing, _: &mut Context<Self>) -> Self::Result {
        if msg.from == msg.to {
            return Err(CoreError::invalid(
                "contact_id",
                "you cannot type to yourself",
            ));
        }
        if !self.accounts.contains_key(&msg.to) {
            return Err(CoreError::not_found("contact_id", "no such account"));
        }
        let event = new_event(Kind::TypingChanged(pb::TypingChanged {
            contact_id: msg.from.to_string(),
            typing: msg.typing,
        }));
        self.bus.do_send(Ephemeral {
            to: vec![msg.to],
            event,
        });
        Ok(())
    }
}
