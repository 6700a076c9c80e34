//! Input rules shared by every entry point (grpc services, phantomctl).

use uuid::Uuid;

use super::{CoreError, CoreResult, PageRequest};

/// Default page size when a request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page a request may ask for; larger sizes are coerced (AIP-158).
pub const MAX_PAGE_SIZE: usize = 500;
/// Longest `client_message_id`, in characters.
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 128;
/// Longest display name or alias, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Longest status text, in characters.
pub const MAX_STATUS_TEXT_CHARS: usize = 256;
/// Longest content type, in characters.
pub const MAX_CONTENT_TYPE_CHARS: usize = 128;

/// Parses a UUID field, naming the field when it is empty or malformed.
pub fn uuid(field: &'static str, value: &str) -> CoreResult<Uuid> {
    if value.is_empty() {
        return Err(CoreError::invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| CoreError::invalid(field, "must be a UUID"))
}

/// Normalises and checks a handle: 3 to 32 of `[a-z0-9_.-]`, compared lower-cased.
pub fn handle(field: &'static str, value: &str) -> CoreResult<String> {
    let h = value.trim().to_ascii_lowercase();
    if h.is_empty() {
        return Err(CoreError::invalid(field, "is required"));
    }
    let len = h.chars().count();
    if !(3..=32).contains(&len) {
        return Err(CoreError::invalid(
            field,
            format!("must be 3 to 32 characters, got {len}"),
        ));
    }
    if !h
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
    {
        return Err(CoreError::invalid(
            field,
            "may only contain a-z, 0-9, '_', '.' and '-'",
        ));
    }
    Ok(h)
}

/// Checks an optional free-text field's length in characters (control characters refused).
pub fn text(field: &'static str, value: &str, max_chars: usize) -> CoreResult<()> {
    let len = value.chars().count();
    if len > max_chars {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {max_chars} characters, got {len}"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(CoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a field's size in bytes.
pub fn max_bytes(field: &'static str, len: usize, max: usize) -> CoreResult<()> {
    if len > max {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {max} bytes, got {len}"),
        ));
    }
    Ok(())
}

/// Validates `page_size` and decodes `page_token`.
pub fn page(page_size: i32, page_token: &str) -> CoreResult<PageRequest> {
    if page_size < 0 {
        return Err(CoreError::invalid("page_size", "must not be negative"));
    }
    let size = match page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let after = if page_token.is_empty() {
        None
    } else {
        Some(decode_page_token(page_token)?)
    };
    Ok(PageRequest { size, after })
}

const PAGE_TOKEN_PREFIX: &str = "p1.";

/// Encodes a row cursor as an opaque page token.
pub fn encode_page_token(row: i64) -> String {
    use base64::Engine;
    let raw = format!("{PAGE_TOKEN_PREFIX}{row}");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_page_token(token: &str) -> CoreResult<i64> {
    use base64::Engine;
    let bad = || CoreError::invalid("page_token", "is not a token this server issued");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    raw.strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|n| n.parse::<i64>().ok())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_lower_cased_and_checked() {
        assert_eq!(handle("handle", "Alice_1").unwrap(), "alice_1");
        assert!(handle("handle", "ab").is_err());
        assert!(handle("handle", &"a".repeat(33)).is_err());
        assert!(handle("handle", "al ice").is_err());
        assert!(handle("handle", "").is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let t = encode_page_token(42);
        assert_eq!(page(0, &t).unwrap().after, Some(42));
        assert_eq!(page(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(page(10_000, "").unwrap().size, MAX_PAGE_SIZE);
        assert!(page(-1, "").is_err());
        assert!(page(0, "garbage!").is_err());
    }
}
