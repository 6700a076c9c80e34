//! Domain types, validation and errors. Nothing here knows about tonic or actix.

pub mod error;
pub mod events;
pub mod stats;
pub mod time;
pub mod tokens;
pub mod types;
pub mod validate;

pub use error::{CoreError, CoreResult};
pub use types::*;
