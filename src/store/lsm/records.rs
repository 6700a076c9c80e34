//! How messages and events are laid out in the `messages` and `events` keyspaces: as their
//! protobuf, except that the ids which are UUIDs (a message's own, its sender's and its
//! recipient's, an event's) are stored as 16 raw bytes each in fields of their own (tags
//! `IDS` and `EVENT_ID`, reserved in `phantom.proto`), not as 36 characters of text. A send
//! stores its message three times (its record and two events), so this takes 231 bytes off
//! those three records (675 → 444 bytes with a 49-byte text), in the journal, the memtables and
//! the tables.
//!
//! A record is the raw ids' fields, then the message (or event) with those strings left empty:
//! one protobuf, since fields may come in any order. Putting the raw ids first lets a read
//! take them off the front without a second pass over the record, and without allocating.
//! A record written before 2026-12-05 has its ids as text and no raw ids: it reads back as it
//! was.

use prost::Message as _;
use uuid::Uuid;

use crate::core::{CoreError, CoreResult};
use crate::pb::{self, event::Kind};

/// A message's three ids, raw: its own, its sender's, its recipient's.
const IDS: u32 = 1000;
/// An event's id, raw.
const EVENT_ID: u32 = 1001;
/// Bytes of the `IDS` field: a two-byte key, a one-byte length, three ids.
const RAW_IDS_LEN: usize = 3 + 48;
/// Bytes of the `EVENT_ID` field.
const RAW_EVENT_ID_LEN: usize = 3 + 16;

/// The stored bytes of a message.
pub(super) fn encode_message(m: &mut pb::Message) -> Vec<u8> {
    let Some((raw, strings)) = take_ids(m) else {
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

/// The stored bytes of an event; a MessageSent's or MessageReceived's message as in
/// `encode_message`.
pub(super) fn encode_event(e: &mut pb::Event) -> Vec<u8> {
    let event_id = canonical(&e.event_id).map(|id| (id, std::mem::take(&mut e.event_id)));
    let taken = message_of(e).and_then(take_ids);
    let mut out = Vec::with_capacity(RAW_IDS_LEN + RAW_EVENT_ID_LEN + e.encoded_len());
    if let Some((raw, _)) = &taken {
        append_raw(&mut out, IDS, raw);
    }
    if let Some((id, _)) = &event_id {
        append_raw(&mut out, EVENT_ID, id.as_bytes());
    }
    e.encode_raw(&mut out);
    if let (Some((_, strings)), Some(m)) = (taken, message_of(e)) {
        put_ids(m, strings);
    }
    if let Some((_, text)) = event_id {
        e.event_id = text;
    }
    out
}

/// An event from its stored bytes.
pub(super) fn decode_event(bytes: &[u8]) -> CoreResult<pb::Event> {
    let raw = Raw::split(bytes)?;
    let mut e = pb::Event::decode(raw.rest).map_err(CoreError::internal)?;
    if !raw.event_id.is_empty() {
        e.event_id = uuid_text(raw.event_id)?;
    }
    if let Some(m) = message_of(&mut e) {
        restore_ids(m, raw.ids)?;
    }
    Ok(e)
}

/// A record taken apart: the raw ids it starts with (empty if none), and the rest.
struct Raw<'a> {
    ids: &'a [u8],
    event_id: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Raw<'a> {
    fn split(mut bytes: &'a [u8]) -> CoreResult<Self> {
        use prost::encoding::{WireType, decode_key, decode_varint};
        let (mut ids, mut event_id): (&[u8], &[u8]) = (&[], &[]);
        loop {
            let mut rest = bytes;
            let slot = match decode_key(&mut rest) {
                Ok((IDS, WireType::LengthDelimited)) => &mut ids,
                Ok((EVENT_ID, WireType::LengthDelimited)) => &mut event_id,
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
            rest: bytes,
        })
    }
}

fn message_of(e: &mut pb::Event) -> Option<&mut pb::Message> {
    match e.kind.as_mut()? {
        Kind::MessageSent(s) => s.message.as_mut(),
        Kind::MessageReceived(r) => r.message.as_mut(),
        _ => None,
    }
}

/// The UUID written as `text`, if `text` is how `uuid_text` writes it back (lowercase,
/// hyphenated: how the server writes every id), so that a record reads back exactly as given.
fn canonical(text: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(text).ok()?;
    (id.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == text).then_some(id)
}

/// Takes a message's three ids out of it, raw and as text, if all three are UUIDs in their
/// canonical form (they always are when the server made them; anything else stays text).
fn take_ids(m: &mut pb::Message) -> Option<([u8; 48], [String; 3])> {
    let mut raw = [0u8; 48];
    for (slot, id) in raw
        .chunks_exact_mut(16)
        .zip([&m.message_id, &m.sender_id, &m.recipient_id])
    {
        slot.copy_from_slice(canonical(id)?.as_bytes());
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
    let id = Uuid::from_slice(raw).map_err(CoreError::internal)?;
    // Straight into a buffer: half the time of `to_string`'s formatting machinery.
    Ok(id
        .hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned())
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
        let stored = encode_message(&mut m);
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
            let stored = encode_event(&mut e);
            assert_eq!(e, before);
            assert_eq!(decode_event(&stored).unwrap(), before);
            // 63 bytes for the message's ids, 19 for the event's, 2 of shorter lengths.
            assert_eq!(stored.len() + 84, before.encode_to_vec().len());
        }
    }

    #[test]
    fn events_without_a_message_keep_their_fields() {
        let mut e = new_event(Kind::ContactRemoved(pb::ContactRemoved {
            contact_id: Uuid::new_v4().to_string(),
        }));
        let before = e.clone();
        let stored = encode_event(&mut e);
        assert_eq!(decode_event(&stored).unwrap(), before);
    }

    #[test]
    fn records_written_before_raw_ids_still_read() {
        let m = message();
        assert_eq!(decode_message(&m.encode_to_vec()).unwrap(), m);
        let e = new_event(Kind::MessageReceived(pb::MessageReceived {
            message: Some(m),
        }));
        assert_eq!(decode_event(&e.encode_to_vec()).unwrap(), e);
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
            let stored = encode_message(&mut m);
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
