//! Bearer tokens: generation, hashing, and the in-memory index of live token hashes.
//!
//! Every call is authenticated, so the lookup is a read-mostly map behind an `RwLock` rather
//! than an actor round-trip: an actor would serialise every call in the server through one
//! thread. The map holds only hashes; the store is the source of truth and fills it at start.

use std::sync::RwLock;

use base64::Engine;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AccountId, TokenRecord};

/// Prefix of account tokens, so that leaked ones are recognisable by secret scanners.
const TOKEN_PREFIX: &str = "phm_";

/// A fresh random token (256 bits from the OS).
pub fn generate() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// SHA-256 of a token: what every call's token is compared by.
pub type TokenDigest = [u8; 32];

/// The digest of a token.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// SHA-256 of a token, hex: what is stored.
pub fn hash(token: &str) -> String {
    hex::encode(digest(token))
}

/// A stored hex hash as a digest; `None` for anything that is not 64 hex digits.
fn parse(hash: &str) -> Option<TokenDigest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hash, &mut d).ok()?;
    Some(d)
}

/// Live token digests → (token id, account). Keyed by the raw digest, so a call's lookup
/// hashes its token and nothing more (no hex string per call).
#[derive(Default)]
pub struct TokenIndex {
    by_hash: RwLock<foldhash::HashMap<TokenDigest, (Uuid, AccountId)>>,
}

impl TokenIndex {
    /// Builds the index from the store's live tokens.
    pub fn new(tokens: Vec<TokenRecord>) -> Self {
        let index = TokenIndex::default();
        for t in tokens {
            index.insert(&t);
        }
        index
    }

    /// Adds a token.
    pub fn insert(&self, t: &TokenRecord) {
        let Some(d) = parse(&t.hash) else {
            tracing::warn!(token_id = %t.id, "stored token hash is not SHA-256 hex; token ignored");
            return;
        };
        if let Ok(mut m) = self.by_hash.write() {
            m.insert(d, (t.id, t.account_id));
        }
    }

    /// Removes a token by its stored hash.
    pub fn remove(&self, hash: &str) {
        if let (Some(d), Ok(mut m)) = (parse(hash), self.by_hash.write()) {
            m.remove(&d);
        }
    }

    /// Finds the token with this digest.
    pub fn lookup(&self, digest: &TokenDigest) -> Option<(Uuid, AccountId)> {
        self.by_hash.read().ok()?.get(digest).copied()
    }
}
