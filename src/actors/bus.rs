//! `EventBusActor`: live routing only. It holds the open streams per account, hands committed
//! events to them in seq order, and counts streams per account, which is presence.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use tokio::sync::mpsc::{self, error::TrySendError};
use uuid::Uuid;

use super::inbox::EphemeralInbox;
use super::subscriber::{Behind, CloseReason, SubscriberActor};
use crate::core::events::SharedEvent;
use crate::core::stats::DeliveryStats;
use crate::core::{AccountId, CommittedEvent};
use crate::pb;

/// A stream's live feed as the bus sees it.
struct Link {
    token_id: Option<Uuid>,
    live: mpsc::Sender<SharedEvent>,
    ephemeral: Arc<EphemeralInbox>,
    /// Set when the stream was told it missed live events; it clears it when it repairs, so
    /// at most one such message is ever queued per stream.
    behind: Arc<AtomicBool>,
    actor: Addr<SubscriberActor>,
}

/// Told when an account gets its first stream or loses its last.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceChanged {
    /// The account.
    pub account: AccountId,
    /// Whether it now has at least one live stream.
    pub online: bool,
}

/// The accounts with at least one live stream, as the bus last left them: published so that
/// committed events no stream waits for are dropped where they are made, instead of waking the
/// bus's thread for nothing (a server-to-server sender with no streams open pays no hop).
///
/// Dropping there is as safe as the bus dropping them: the store makes a batch durable before
/// it asks, and a stream is in here before it reads where the durable log ends, so an event
/// either is published after its stream registered or is durable before its replay begins.
#[derive(Clone, Default)]
pub struct LiveAccounts(Arc<RwLock<HashSet<AccountId>>>);

impl LiveAccounts {
    /// Keeps the events of accounts that have a live stream.
    pub fn keep_live(&self, events: &mut Vec<CommittedEvent>) {
        // A poisoned lock only means a writer panicked mid-insert: the set is still a set.
        let live = self.0.read().unwrap_or_else(|e| e.into_inner());
        events.retain(|e| live.contains(&e.account_id));
    }

    fn set(&self, account: AccountId, online: bool) {
        let mut live = self.0.write().unwrap_or_else(|e| e.into_inner());
        if online {
            live.insert(account);
        } else {
            live.remove(&account);
        }
    }
}

/// The router of live events.
pub struct EventBusActor {
    streams: HashMap<AccountId, HashMap<u64, Link>>,
    presence: Option<Recipient<PresenceChanged>>,
    next_id: u64,
    stats: Arc<DeliveryStats>,
    live: LiveAccounts,
}

impl EventBusActor {
    /// An empty bus counting into `stats`, keeping `live` up to date.
    pub fn new(stats: Arc<DeliveryStats>, live: LiveAccounts) -> Self {
        EventBusActor {
            streams: HashMap::new(),
            presence: None,
            next_id: 1,
            stats,
            live,
        }
    }

    /// Hands a durable event to every stream of an account; never waits.
    fn deliver(&mut self, account: AccountId, event: &SharedEvent) {
        let Some(links) = self.streams.get_mut(&account) else {
            return;
        };
        let before = links.len();
        let stats = &self.stats;
        links.retain(|_, link| match link.live.try_send(event.clone()) {
            Ok(()) => true,
            // The stream's actor is behind its own feed (a burst): tell it once, and it
            // re-reads the gap from the log.
            Err(TrySendError::Full(_)) => {
                stats.lagged.inc();
                if !link.behind.swap(true, Ordering::AcqRel) {
                    link.actor.do_send(Behind(event.seq));
                }
                true
            }
            Err(TrySendError::Closed(_)) => false,
        });
        let removed = before - links.len();
        if removed > 0 {
            self.stats.open_streams.sub(removed as i64);
        }
        if links.is_empty() {
            self.streams.remove(&account);
            self.notify(account, false);
        }
    }

    /// Puts an ephemeral event in every stream's conflating inbox of an account.
    fn deliver_ephemeral(&self, account: AccountId, event: &SharedEvent) {
        for link in self
            .streams
            .get(&account)
            .into_iter()
            .flat_map(|l| l.values())
        {
            if link.ephemeral.put(event.clone()) {
                self.stats.conflated.inc();
            }
        }
    }

    /// An account got its first stream or lost its last.
    fn notify(&self, account: AccountId, online: bool) {
        self.live.set(account, online);
        if online {
            self.stats.online_accounts.inc();
        } else {
            self.stats.online_accounts.dec();
        }
        if let Some(p) = &self.presence {
            p.do_send(PresenceChanged { account, online });
        }
    }
}

impl Actor for EventBusActor {
    type Context = Context<Self>;
}

/// Sets who hears about presence changes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPresenceListener(pub Recipient<PresenceChanged>);

impl Handler<SetPresenceListener> for EventBusActor {
    type Result = ();
    fn handle(&mut self, msg: SetPresenceListener, _: &mut Context<Self>) {
        self.presence = Some(msg.0);
    }
}

/// Registers a stream; answers its id.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Register {
    /// Whose events it wants.
    pub account: AccountId,
    /// The token that opened it, for revocation.
    pub token_id: Option<Uuid>,
    /// Where live durable events go.
    pub live: mpsc::Sender<SharedEvent>,
    /// Where presence and typing go.
    pub ephemeral: Arc<EphemeralInbox>,
    /// Shared flag: set by the bus when it told the stream it missed live events.
    pub behind: Arc<AtomicBool>,
    /// The stream's actor.
    pub actor: Addr<SubscriberActor>,
}

impl Handler<Register> for EventBusActor {
    type Result = u64;
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let links = self.streams.entry(msg.account).or_default();
        let first = links.is_empty();
        self.stats.open_streams.inc();
        links.insert(
            id,
            Link {
                token_id: msg.token_id,
                live: msg.live,
                ephemeral: msg.ephemeral,
                behind: msg.behind,
                actor: msg.actor,
            },
        );
        if first {
            self.notify(msg.account, true);
        }
        id
    }
}

/// Removes a stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// Its account.
    pub account: AccountId,
    /// Its id from `Register`.
    pub id: u64,
}

impl Handler<Unregister> for EventBusActor {
    type Result = ();
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        let Some(links) = self.streams.get_mut(&msg.account) else {
            return;
        };
        if links.remove(&msg.id).is_some() {
            self.stats.open_streams.dec();
            if links.is_empty() {
                self.streams.remove(&msg.account);
                self.notify(msg.account, false);
            }
        }
    }
}

/// Durable events just committed, in seq order per account.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Vec<CommittedEvent>);

impl Handler<Publish> for EventBusActor {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        for c in msg.0 {
            self.deliver(c.account_id, &SharedEvent::new(c.into_event()));
        }
    }
}

/// An ephemeral event (seq 0) for some accounts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ephemeral {
    /// Who gets it.
    pub to: Vec<AccountId>,
    /// The event.
    pub event: pb::Event,
}

impl Handler<Ephemeral> for EventBusActor {
    type Result = ();
    fn handle(&mut self, msg: Ephemeral, _: &mut Context<Self>) {
        let event = SharedEvent::new(msg.event);
        for account in msg.to {
            self.deliver_ephemeral(account, &event);
        }
    }
}

/// Ends streams: all of them (shutdown), or those of one token (revocation).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseStreams {
    /// `None`: every stream.
    pub token_id: Option<Uuid>,
    /// Why.
    pub reason: CloseReason,
}

impl Handler<CloseStreams> for EventBusActor {
    type Result = usize;
    fn handle(&mut self, msg: CloseStreams, _: &mut Context<Self>) -> usize {
        let mut closed = 0;
        for links in self.streams.values() {
            for link in links.values() {
                if msg.token_id.is_none() || link.token_id == msg.token_id {
                    link.actor.do_send(Close(msg.reason));
                    closed += 1;
                }
            }
        }
        closed
    }
}

/// Tells a stream to end.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Close(pub CloseReason);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::new_event;

    fn committed(account: AccountId, seq: u64) -> CommittedEvent {
        let mut event = new_event(pb::event::Kind::TypingChanged(pb::TypingChanged::default()));
        event.seq = seq;
        CommittedEvent::whole(account, event)
    }

    #[test]
    fn only_events_of_accounts_with_a_live_stream_are_kept() {
        let live = LiveAccounts::default();
        let bus = EventBusActor::new(Arc::new(DeliveryStats::default()), live.clone());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let batch = || vec![committed(a, 1), committed(b, 1), committed(a, 2)];
        let kept = |mut events: Vec<CommittedEvent>| {
            live.keep_live(&mut events);
            events
                .iter()
                .map(|e| (e.account_id, e.event.seq))
                .collect::<Vec<_>>()
        };
        assert!(
            kept(batch()).is_empty(),
            "no stream: nothing goes to the bus"
        );
        bus.notify(a, true);
        assert_eq!(kept(batch()), [(a, 1), (a, 2)], "in order, alice's only");
        bus.notify(b, true);
        assert_eq!(kept(batch()).len(), 3);
        bus.notify(a, false);
        assert_eq!(kept(batch()), [(b, 1)]);
    }
}
