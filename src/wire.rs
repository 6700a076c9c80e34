//! Protobuf messages written by hand instead of generated, where the server needs something
//! prost's generated structs cannot hold. The wire format is exactly the generated one (same
//! fields, numbers and types as `proto/phantom/v1/phantom.proto`); `build.rs` points the
//! generated code here with `extern_path`.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encoded_len_varint, key_len, message, string};
use prost::{DecodeError, Message};

use crate::pb;

/// `phantom.v1.GetContactsResponse`. The server can also carry an already encoded body: the
/// `ContactsActor` publishes each page it builds once and every later read of the unchanged
/// page sends those bytes, with no views to build, copy or encode (see `ContactPages`).
#[derive(Clone, Default, PartialEq)]
pub struct GetContactsResponse {
    /// Field 1: one page of contacts.
    pub contacts: Vec<pb::Contact>,
    /// Field 2: the token of the next page; empty on the last page.
    pub next_page_token: String,
    /// When set, the whole encoded message, sent instead of the two fields above.
    encoded: Option<Bytes>,
}

impl GetContactsResponse {
    /// A response built from its fields.
    pub fn new(contacts: Vec<pb::Contact>, next_page_token: String) -> Self {
        GetContactsResponse {
            contacts,
            next_page_token,
            encoded: None,
        }
    }

    /// A response whose encoding is already known (the output of [`Message::encode_to_vec`] on
    /// a response built with [`GetContactsResponse::new`]).
    pub fn preencoded(body: Bytes) -> Self {
        GetContactsResponse {
            encoded: Some(body),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for GetContactsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("GetContactsResponse");
        match &self.encoded {
            Some(b) => d.field("encoded_bytes", &b.len()),
            None => d
                .field("contacts", &self.contacts)
                .field("next_page_token", &self.next_page_token),
        }
        .finish()
    }
}

impl Message for GetContactsResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(body) = &self.encoded {
            buf.put_slice(body);
            return;
        }
        for c in &self.contacts {
            message::encode(1, c, buf);
        }
        if !self.next_page_token.is_empty() {
            string::encode(2, &self.next_page_token, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => message::merge_repeated(wire_type, &mut self.contacts, buf, ctx),
            2 => string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(body) = &self.encoded {
            return body.len();
        }
        let token = if self.next_page_token.is_empty() {
            0
        } else {
            key_len(2)
                + encoded_len_varint(self.next_page_token.len() as u64)
                + self.next_page_token.len()
        };
        message::encoded_len_repeated(1, &self.contacts) + token
    }

    fn clear(&mut self) {
        self.contacts.clear();
        self.next_page_token.clear();
        self.encoded = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(i: u32) -> pb::Contact {
        pb::Contact {
            contact_id: format!("id-{i}"),
            handle: format!("h{i}"),
            display_name: "Name".into(),
            status: 1,
            status_text: String::new(),
            last_seen: None,
            added_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
        }
    }

    /// What prost derives for the proto's definition, to check the hand-written impl against.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(message, repeated, tag = "1")]
        contacts: Vec<pb::Contact>,
        #[prost(string, tag = "2")]
        next_page_token: String,
    }

    #[test]
    fn fields_and_preencoded_bodies_encode_the_same_and_decode_back() {
        for (n, token) in [(0, ""), (3, ""), (20, "next-page")] {
            let built = GetContactsResponse::new((0..n).map(contact).collect(), token.into());
            let bytes = built.encode_to_vec();
            let derived = Derived {
                contacts: built.contacts.clone(),
                next_page_token: token.into(),
            };
            assert_eq!(bytes, derived.encode_to_vec());
            assert_eq!(bytes.len(), built.encoded_len());
            let pre = GetContactsResponse::preencoded(Bytes::from(bytes.clone()));
            assert_eq!(pre.encoded_len(), bytes.len());
            assert_eq!(pre.encode_to_vec(), bytes);
            let back = GetContactsResponse::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(back.contacts, built.contacts);
            assert_eq!(back.next_page_token, token);
        }
    }
}
