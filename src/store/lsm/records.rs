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
/// `Event.message_sent`'s field number in `phantom.proto`.
const MESSAGE_SENT: u32 = 6;
/// `Event.message_received`'s field number in `phantom.proto`.
const MESSAGE_RECEIVED: u32 = 5;

/// A message encoded once, for its own record and for the two events that carry it (a send
/// stores it three times: encoding it once, and its ids parsed once, is a tenth of the
/// writer's instructions per send, counted with callgrind).
pub(super) struct StoredMessage {
    /// The message's three ids raw, if they were taken out of `body`.
    raw: Option<[u8; 48]>,
    /// The message's fields, its ids left out where `raw` holds them.
    body: Vec<u8>,
}

impl StoredMessage {
    /// Encodes `m`, which is given back as it was; `parsed`, if given, are its own id, sender
    /// and recipient already parsed from its text by the caller (else parsed here).
    pub fn encode_parsed(m: &mut pb::Message, parsed: Option<[Uuid; 3]>) -> Self {
        debug_assert!(parsed.is_none_or(|p| {
            [&m.message_id, &m.sender_id, &m.recipient_id]
                .iter()
                .zip(p)
                .all(|(text, id)| Uuid::try_parse(text).ok() == Some(id))
        }));
        let Some((raw, strings)) = take_ids(m, parsed) else {
            return StoredMessage {
                raw: None,
                body: m.encode_to_vec(),
            };
        };
        let mut body = Vec::with_capacity(m.encoded_len());
        m.encode_raw(&mut body);
        put_ids(m, strings);
        StoredMessage {
            raw: Some(raw),
            body,
        }
    }

    /// The message's record in `messages`.
    pub fn record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RAW_IDS_LEN + self.body.len());
        if let Some(raw) = &self.raw {
            append_raw(&mut out, IDS, raw);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// The record of `e`, a MessageSent or MessageReceived of this message: the same bytes as
    /// `encode_event` gives, the message's taken from here instead of encoded again. Any other
    /// event is encoded by `encode_event`. `id`, if given, is `e`'s id already parsed from its
    /// text (else parsed here).
    pub fn event(&self, e: &mut pb::Event, id: Option<Uuid>) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let tag = match e.kind {
            Some(Kind::MessageSent(_)) => MESSAGE_SENT,
            Some(Kind::MessageReceived(_)) => MESSAGE_RECEIVED,
            _ => return encode_event(e),
        };
        let kind = e.kind.take();
        // The kind's field holds its one field, the message.
        let inner = 1 + encoded_len_varint(self.body.len() as u64) + self.body.len();
        let out = event_record(e, id, self.raw.as_ref(), 1 + 10 + inner, |e, out| {
            // Fields in tag order, as prost writes them: the kind is the event's last field.
            e.encode_raw(out);
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(inner as u64, out);
            append_raw(out, 1, &self.body);
        });
        e.kind = kind;
        // The event must carry this very message: then it is what encoding it whole gives.
        debug_assert_eq!(out, encode_event(&mut e.clone()));
        out
    }
}

/// A message from its stored bytes.
pub(super) fn decode_message(bytes: &[u8]) -> CoreResult<pb::Message> {
    let raw = Raw::split(bytes)?;
    let mut m = pb::Message::decode(raw.rest).map_err(CoreError::internal)?;
    restore_ids(&mut m, raw.ids)?;
    Ok(m)
}

/// The stored bytes of an event; a MessageSent's or MessageReceived's message as in
/// `StoredMessage::record`.
pub(super) fn encode_event(e: &mut pb::Event) -> Vec<u8> {
    let taken = message_of(e).and_then(|m| take_ids(m, None));
    let out = event_record(e, None, taken.as_ref().map(|(raw, _)| raw), 0, |e, out| {
        e.encode_raw(out)
    });
    if let (Some((_, strings)), Some(m)) = (taken, message_of(e)) {
        put_ids(m, strings);
    }
    out
}

/// An event's record: its message's raw ids (`ids`, if they were taken out of it), the
/// event's own id raw (if its text is canonical; `id`, if given, is that text already
/// parsed), then what `fields` writes, with the id's text left out meanwhile. `more` is what
/// `fields` writes beyond the event's own encoding.
fn event_record(
    e: &mut pb::Event,
    id: Option<Uuid>,
    ids: Option<&[u8; 48]>,
    more: usize,
    fields: impl FnOnce(&mut pb::Event, &mut Vec<u8>),
) -> Vec<u8> {
    debug_assert!(id.is_none_or(|id| Uuid::try_parse(&e.event_id).ok() == Some(id)));
    let parsed = match id {
        Some(id) => canonical_form(&e.event_id).then_some(id),
        None => canonical(&e.event_id),
    };
    let event_id = parsed.map(|id| (id, std::mem::take(&mut e.event_id)));
    let mut out = Vec::with_capacity(RAW_IDS_LEN + RAW_EVENT_ID_LEN + e.encoded_len() + more);
    if let Some(raw) = ids {
        append_raw(&mut out, IDS, raw);
    }
    if let Some((id, _)) = &event_id {
        append_raw(&mut out, EVENT_ID, id.as_bytes());
    }
    fields(e, &mut out);
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
        let stored = StoredMessage::encode_parsed(&mut m, None).record();
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

    /// A message encoded once gives each of its events the same bytes as encoding the event
    /// whole (which checks the kinds' field numbers), whether its ids were taken out or not.
    #[test]
    fn events_of_a_message_encoded_once_are_as_if_encoded_whole() {
        let mut odd = message();
        odd.sender_id = "not-a-uuid".into();
        for mut m in [message(), odd] {
            let stored = StoredMessage::encode_parsed(&mut m, None);
            let mut record = m.clone();
            assert_eq!(
                stored.record(),
                StoredMessage::encode_parsed(&mut record, None).record()
            );
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
                let once = stored.event(&mut e, None);
                let id = Uuid::try_parse(&e.event_id).ok();
                assert_eq!(stored.event(&mut e, id), once, "with the id given");
                assert_eq!(e, before, "the event is given back untouched");
                assert_eq!(once, encode_event(&mut e));
                assert_eq!(decode_event(&once).unwrap(), before);
            }
        }
        // Another kind of event is encoded as it is.
        let mut e = new_event(Kind::ContactRemoved(pb::ContactRemoved {
            contact_id: Uuid::new_v4().to_string(),
        }));
        let stored = StoredMessage::encode_parsed(&mut message(), None);
        assert_eq!(stored.event(&mut e.clone(), None), encode_event(&mut e));
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
            let stored = StoredMessage::encode_parsed(&mut m, None).record();
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
