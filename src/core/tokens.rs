//! Bearer tokens: generation, hashing, and the in-memory index of live token hashes.
//!
//! Every call is authenticated, so the lookup is a read-mostly map behind an `RwLock` rather
//! than an actor round-trip: an actor would serialise every call in the server through one
//! thread. The map holds only hashes; the store is the source of truth and fills it at start.

use std::collections::HashMap;
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

/// SHA-256 of a token, hex: what is stored and compared.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Live token hashes → (token id, account).
#[derive(Default)]
pub struct TokenIndex {
    by_hash: RwLock<HashMap<String, (Uuid, AccountId)>>,
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
        if let Ok(mut m) = self.by_hash.write() {
            m.insert(t.hash.clone(), (t.id, t.account_id));
        }
    }

    /// Removes a token by its hash.
    pub fn remove(&self, hash: &str) {
        if let Ok(mut m) = self.by_hash.write() {
            m.remove(hash);
        }
    }

    /// Finds the token with this hash.
    pub fn lookup(&self, hash: &str) -> Option<(Uuid, AccountId)> {
        self.by_hash.read().ok()?.get(hash).copied()
    }
}
