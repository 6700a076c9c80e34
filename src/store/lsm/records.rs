//! How messages and events are laid out in the `messages` and `events` keyspaces: as their
//! protobuf, except that the ids which are UUIDs (a message's own, its sender's and its
//! recipient's, an event's) are stored as 16 raw bytes each in fields of their own (tags
//! `IDS` and `EVENT_ID`, reserved in `phantom.proto`), not as 36 characters of text.
//!
//! A MessageSent or MessageReceived event refers to its message instead of carrying it: its
//! record holds the message's key in `messages` (tag `MESSAGE_AT`) and the kind with no
//! message, ~50 bytes against ~450 for the whole message. A send stores its message once, not
//! three times: under h2load that gave 8.5% more sends on the mean of seven alternating pairs
//! (BENCHMARKS.md, thirtieth session). A read joins the messages back
//! (`Tables::join_messages`); a message record keeps its state as sent, which is what the
//! event carried.
//!
//! A record is the raw fields, then the message (or event) with those strings left empty:
//! one protobuf, since fields may come in any order. Putting the raw fields first lets a read
//! take them off the front without a second pass over the record, and without allocating.
//! A record written before 2026-12-05 has its ids as text and no raw ids, and one written
//! before 2026-12-06 may be an event with its message whole: both read back as they were.

use prost::Message as _;
use uuid::Uuid;

use crate::core::events::message_slot;
use crate::core::{CoreError, CoreResult};
use crate::pb;

/// A message's three ids, raw: its own, its sender's, its recipient's.
const IDS: u32 = 1000;
/// An event's id, raw.
const EVENT_ID: u32 = 1001;
/// A message event's message: its key in `messages`.
const MESSAGE_AT: u32 = 1002;
/// Bytes of the `IDS` field: a two-byte key, a one-byte length, three ids.
const RAW_IDS_LEN: usize = 3 + 48;
/// Bytes of the `EVENT_ID` field.
const RAW_EVENT_ID_LEN: usize = 3 + 16;
/// Bytes of the `MESSAGE_AT` field.
const RAW_MESSAGE_AT_LEN: usize = 3 + 16;

/// A message's record in `messages`; `m` is given back as it was. `parsed`, if given, are
/// its own id, sender and recipient already parsed from its text by the caller (else parsed
/// here).
pub(super) fn encode_message(m: &mut pb::Message, parsed: Option<[Uuid; 3]>) -> Vec<u8> {
    debug_assert!(parsed.is_none_or(|p| {
        [&m.message_id, &m.sender_id, &m.recipient_id]
            .iter()
            .zip(p)
            .all(|(text, id)| Uuid::try_parse(text).ok() == Some(id))
    }));
    let Some((raw, strings)) = take_ids(m, parsed) else {
        return m.encode_to_vec();
    };
    let mut out = Vec::with_capacity(RAW_IDS_LEN + m.encoded_len());
    append_raw(&mut out, IDS, &raw);
    m.encode_raw(&mut out);
    put_ids(m, strings);
    out
}

/// A message from its stored bytes.
pub(super) fn decode_message(bytes: &[u8]) -> CoreResult<pb::Message> {
    let raw = Raw::split(bytes)?;
    let mut m = pb::Message::decode(raw.rest).map_err(CoreError::internal)?;
    restore_ids(&mut m, raw.ids)?;
    Ok(m)
}

/// The stored bytes of an event, whole: a message event with its message, as every event was
/// stored before 2026-12-06 (the writer now stores message events by `encode_message_event`).
pub(super) fn encode_event(e: &mut pb::Event) -> Vec<u8> {
    let taken = message_of(e).and_then(|m| take_ids(m, None));
    let out = event_record(e, None, taken.as_ref().map(|(raw, _)| raw), None);
    if let (Some((_, strings)), Some(m)) = (taken, message_of(e)) {
        put_ids(m, strings);
    }
    out
}

/// The stored bytes of `e`, a MessageSent or MessageReceived whose message's record is at
/// `at` in `messages`: the event without its message, and `at`. `e` is given back as it was;
/// `id`, if given, is its id already parsed from its text (else parsed here), or its id when
/// its text is left empty (`new_event_id_apart`).
pub(super) fn encode_message_event(e: &mut pb::Event, id: Option<Uuid>, at: &[u8; 16]) -> Vec<u8> {
    let Some(slot) = message_slot(e) else {
        return encode_event(e);
    };
    let message = slot.take();
    let out = event_record(e, id, None, Some(at));
    if let Some(slot) = message_slot(e) {
        *slot = message;
    }
    out
}

/// An event's record: its message's raw ids (`ids`, if they were taken out of it), the
/// event's own id raw (if its text is canonical; `id`, if given, is that text already
/// parsed, or the id of an event whose text is empty), its message's key (`at`, if it refers
/// to it), then the event's fields, with the id's text left out meanwhile.
fn event_record(
    e: &mut pb::Event,
    id: Option<Uuid>,
    ids: Option<&[u8; 48]>,
    at: Option<&[u8; 16]>,
) -> Vec<u8> {
    debug_assert!(id.is_none_or(|id| {
        e.event_id.is_empty() || Uuid::try_parse(&e.event_id).ok() == Some(id)
    }));
    let parsed = match id {
        Some(id) => (e.event_id.is_empty() || canonical_form(&e.event_id)).then_some(id),
        None => canonical(&e.event_id),
    };
    let event_id = parsed.map(|id| (id, std::mem::take(&mut e.event_id)));
    // Exactly the record's size: a message event's record is ~50 bytes, and the raw fields it
    // lacks would more than double its allocation.
    let raw_len = ids.map_or(0, |_| RAW_IDS_LEN)
        + event_id.as_ref().map_or(0, |_| RAW_EVENT_ID_LEN)
        + at.map_or(0, |_| RAW_MESSAGE_AT_LEN);
    let mut out = Vec::with_capacity(raw_len + e.encoded_len());
    if let Some(raw) = ids {
        append_raw(&mut out, IDS, raw);
    }
    if let Some((id, _)) = &event_id {
        append_raw(&mut out, EVENT_ID, id.as_bytes());
    }
    if let Some(at) = at {
        append_raw(&mut out, MESSAGE_AT, at);
    }
    e.encode_raw(&mut out);
    if let Some((_, text)) = event_id {
        e.event_id = text;
    }
    out
}

/// An event read back: whole, or with its message still to be joined from `messages`.
pub(super) struct StoredEvent {
    /// The event; a message event that refers to its message has none yet.
    pub event: pb::Event,
    /// The key in `messages` of the message it refers to, if it does.
    pub message_at: Option<[u8; 16]>,
}

/// An event from its stored bytes.
pub(super) fn decode_event(bytes: &[u8]) -> CoreResult<StoredEvent> {
    let raw = Raw::split(bytes)?;
    let mut event = pb::Event::decode(raw.rest).map_err(CoreError::internal)?;
    if !raw.event_id.is_empty() {
        event.event_id = uuid_text(raw.event_id)?;
    }
    if let Some(m) = message_of(&mut event) {
        restore_ids(m, raw.ids)?;
    }
    let message_at = match raw.message_at {
        [] => None,
        at => Some(at.try_into().map_err(|_| {
            CoreError::Internal(format!(
                "a stored message key is {} bytes, not 16",
                at.len()
            ))
        })?),
    };
    if message_at.is_some() && message_slot(&mut event).is_none() {
        return Err(CoreError::Internal(
            "a stored event refers to a message but is no message event".into(),
        ));
    }
    Ok(StoredEvent { event, message_at })
}

/// Gives a message event the message it referred to.
pub(super) fn put_message(e: &mut pb::Event, m: pb::Message) {
    if let Some(slot) = message_slot(e) {
        *slot = Some(m);
    }
}

/// A record taken apart: the raw ids it starts with (empty if none), and the rest.
struct Raw<'a> {
    ids: &'a [u8],
    event_id: &'a [u8],
    message_at: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Raw<'a> {
    fn split(mut bytes: &'a [u8]) -> CoreResult<Self> {
        use prost::encoding::{WireType, decode_key, decode_varint};
        let (mut ids, mut event_id, mut message_at): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
        loop {
            let mut rest = bytes;
            let slot = match decode_key(&mut rest) {
                Ok((IDS, WireType::LengthDelimited)) => &mut ids,
                Ok((EVENT_ID, WireType::LengthDelimited)) => &mut event_id,
                Ok((MESSAGE_AT, WireType::LengthDelimited)) => &mut message_at,
                // The message's own fields (or nothing): the raw ids, if any, are behind.
                _ => break,
            };
            let len = decode_varint(&mut rest).map_err(CoreError::internal)?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= rest.len())
                .ok_or_else(|| CoreError::Internal("a stored id field is cut short".into()))?;
            (*slot, bytes) = rest.split_at(len);
        }
        Ok(Raw {
            ids,
            event_id,
            message_at,
            rest: bytes,
        })
    }
}

fn message_of(e: &mut pb::Event) -> Option<&mut pb::Message> {
    message_slot(e)?.as_mut()
}

/// The UUID written as `text`, if `text` is how `uuid_text` writes it back (lowercase,
/// hyphenated: how the server writes every id), so that a record reads back exactly as given.
fn canonical(text: &str) -> Option<Uuid> {
    if !canonical_form(text) {
        return None;
    }
    Uuid::try_parse(text).ok()
}

/// Whether `text`, if it parses as a UUID, is in the canonical form: of the forms `try_parse`
/// takes, only the hyphenated one is 36 characters long.
fn canonical_form(text: &str) -> bool {
    // A fold, not `any`: without the early exit the 36 bytes are checked in a few vector
    // instructions.
    text.len() == 36
        && !text
            .bytes()
            .fold(false, |up, b| up | b.is_ascii_uppercase())
}

/// Takes a message's three ids out of it, raw and as text, if all three are UUIDs in their
/// canonical form (they always are when the server made them; anything else stays text);
/// `parsed`, if given, are those UUIDs already parsed from the text.
fn take_ids(m: &mut pb::Message, parsed: Option<[Uuid; 3]>) -> Option<([u8; 48], [String; 3])> {
    let mut raw = [0u8; 48];
    for (i, (slot, text)) in raw
        .chunks_exact_mut(16)
        .zip([&m.message_id, &m.sender_id, &m.recipient_id])
        .enumerate()
    {
        let id = match parsed {
            Some(ids) => canonical_form(text).then_some(ids[i])?,
            None => canonical(text)?,
        };
        slot.copy_from_slice(id.as_bytes());
    }
    let strings = [
        std::mem::take(&mut m.message_id),
        std::mem::take(&mut m.sender_id),
        std::mem::take(&mut m.recipient_id),
    ];
    Some((raw, strings))
}

fn put_ids(m: &mut pb::Message, [id, sender, recipient]: [String; 3]) {
    m.message_id = id;
    m.sender_id = sender;
    m.recipient_id = recipient;
}

/// Puts a record's raw ids back as text; an old record (no raw ids) keeps its own.
fn restore_ids(m: &mut pb::Message, raw: &[u8]) -> CoreResult<()> {
    if raw.is_empty() {
        return Ok(());
    }
    if raw.len() != 48 {
        return Err(CoreError::Internal(format!(
            "stored message ids are {} bytes, not 48",
            raw.len()
        )));
    }
    m.message_id = uuid_text(&raw[..16])?;
    m.sender_id = uuid_text(&raw[16..32])?;
    m.recipient_id = uuid_text(&raw[32..])?;
    Ok(())
}

fn uuid_text(raw: &[u8]) -> CoreResult<String> {
    Ok(crate::core::uuid_text(
        Uuid::from_slice(raw).map_err(CoreError::internal)?,
    ))
}

fn append_raw(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::new_event;
    use crate::core::time::{now_micros, to_timestamp};
    use crate::pb::event::Kind;

    fn message() -> pb::Message {
        pb::Message {
            message_id: Uuid::now_v7().to_string(),
            sender_id: Uuid::new_v4().to_string(),
            recipient_id: Uuid::new_v4().to_string(),
            text: "benchmark message, about the size of a chat line".into(),
            client_message_id: "c-1".into(),
            sent_at: Some(to_timestamp(now_micros())),
            state: pb::MessageState::Sent as i32,
            ..Default::default()
        }
    }

    #[test]
    fn messages_and_events_read_back_as_written_and_smaller() {
        let mut m = message();
        let before = m.clone();
        let stored = encode_message(&mut m, None);
        assert_eq!(m, before, "encoding gives the message back untouched");
        assert_eq!(decode_message(&stored).unwrap(), before);
        assert_eq!(stored.len() + 63, before.encode_to_vec().len());

        for kind in [
            Kind::MessageSent(pb::MessageSent {
                message: Some(message()),
            }),
            Kind::MessageReceived(pb::MessageReceived {
                message: Some(message()),
            }),
        ] {
            let mut e = new_event(kind);
            e.seq = 42;
            let before = e.clone();
            // As events carried their messages before 2026-12-06.
            let stored = encode_event(&mut e);
            assert_eq!(e, before);
            let back = decode_event(&stored).unwrap();
            assert_eq!((back.event, back.message_at), (before.clone(), None));
            // 63 bytes for the message's ids, 19 for the event's, 2 of shorter lengths.
            assert_eq!(stored.len() + 84, before.encode_to_vec().len());
        }
    }

    /// A message event refers to its message: its record is small, reads back without the
    /// message and with the key it was given, and with the message put back is as it was.
    #[test]
    fn message_events_refer_to_their_message() {
        let at = [7u8; 16];
        let mut odd = message();
        odd.sender_id = "not-a-uuid".into();
        for m in [message(), odd] {
            for kind in [
                Kind::MessageSent(pb::MessageSent {
                    message: Some(m.clone()),
                }),
                Kind::MessageReceived(pb::MessageReceived {
                    message: Some(m.clone()),
                }),
            ] {
                let mut e = new_event(kind);
                e.seq = 7;
                let before = e.clone();
                let stored = encode_message_event(&mut e, None, &at);
                assert_eq!(e, before, "the event is given back untouched");
                let id = Uuid::try_parse(&e.event_id).ok();
                assert_eq!(encode_message_event(&mut e, id, &at), stored, "id given");
                // Raw id and key (38 bytes), seq, time and the empty kind.
                assert!(stored.len() < 60, "{} bytes", stored.len());
                let back = decode_event(&stored).unwrap();
                assert_eq!(back.message_at, Some(at));
                let mut event = back.event;
                assert_ne!(event, before, "read back without its message");
                put_message(&mut event, m.clone());
                assert_eq!(event, before);
            }
        }
        // Another kind of event is encoded as it is, and refers to nothing.
        let mut e = new_event(Kind::ContactRemoved(pb::ContactRemoved {
            contact_id: Uuid::new_v4().to_string(),
        }));
        let stored = encode_message_event(&mut e.clone(), None, &at);
        assert_eq!(stored, encode_event(&mut e));
        assert_eq!(decode_event(&stored).unwrap().message_at, None);
    }

    #[test]
    fn message_keys_of_the_wrong_length_or_kind_are_an_error() {
        let mut e = new_event(Kind::MessageSent(pb::MessageSent::default()));
        let mut stored = Vec::new();
        append_raw(&mut stored, MESSAGE_AT, &[1; 12]);
        e.encode_raw(&mut stored);
        assert!(decode_event(&stored).is_err());
        e.kind = Some(Kind::ContactRemoved(pb::ContactRemoved::default()));
        let mut stored = Vec::new();
        append_raw(&mut stored, MESSAGE_AT, &[1; 16]);
        e.encode_raw(&mut stored);
        assert!(decode_event(&stored).is_err());
    }

    #[test]
    fn events_without_a_message_keep_their_fields() {
        let mut e = new_event(Kind::ContactRemoved(pb::ContactRemoved {
            contact_id: Uuid::new_v4().to_string(),
        }));
        let before = e.clone();
        let stored = encode_event(&mut e);
        assert_eq!(decode_event(&stored).unwrap().event, before);
    }

    #[test]
    fn records_written_before_raw_ids_still_read() {
        let m = message();
        assert_eq!(decode_message(&m.encode_to_vec()).unwrap(), m);
        let e = new_event(Kind::MessageReceived(pb::MessageReceived {
            message: Some(m),
        }));
        assert_eq!(decode_event(&e.encode_to_vec()).unwrap().event, e);
    }

    #[test]
    fn ids_that_are_not_uuids_in_their_usual_form_stay_text() {
        let id = Uuid::new_v4();
        for other in [
            "not-a-uuid".to_string(),
            id.hyphenated().to_string().to_uppercase(),
            id.simple().to_string(),
        ] {
            let mut m = message();
            m.sender_id = other;
            let before = m.clone();
            let stored = encode_message(&mut m, None);
            assert_eq!(stored, before.encode_to_vec());
            assert_eq!(decode_message(&stored).unwrap(), before);
        }
    }

    #[test]
    fn raw_ids_of_the_wrong_length_are_an_error() {
        let mut stored = Vec::new();
        append_raw(&mut stored, IDS, &[1; 20]);
        message().encode_raw(&mut stored);
        assert!(decode_message(&stored).is_err());
        // A length past the end of the record.
        assert!(decode_message(&stored[..10]).is_err());
    }
}
