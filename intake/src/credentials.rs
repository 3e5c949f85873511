//! Credentials in requests: the `Authorization` header's schemes, the
//! HTTP-whitespace trimming every credential goes through, and how a secret
//! (an API key, a token) is stored: as its SHA-256, never in the clear.

use sha2::{Digest, Sha256};

use crate::Error;

/// SHA-256 of a secret: what is stored and looked up instead of it.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Lowercase hex SHA-256 of an API key: the KV key of its record at the
/// edge and its id in the backend's catalog.
pub fn key_hash(key: &str) -> String {
    hex(&secret_hash(key))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// `text` without leading and trailing HTTP whitespace (space and tab, RFC
/// 9110 `OWS`). Not `str::trim`: a key followed by U+00A0 or any other
/// Unicode space is another key, not this one.
pub fn trim_http_whitespace(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Longest key we bother hashing; anything longer cannot be one of ours.
pub const MAX_KEY_LEN: usize = 256;

/// The key from `Authorization: Bearer <key>`, else from `?key=` (sendBeacon
/// cannot set headers).
pub fn extract_key(authorization: Option<&str>, query_key: Option<&str>) -> Result<String, Error> {
    let from_header = authorization.and_then(bearer);
    let key = from_header
        .or(query_key.map(trim_http_whitespace))
        .filter(|k| !k.is_empty())
        .ok_or(Error::MissingKey)?;
    if key.len() > MAX_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::InvalidKey);
    }
    Ok(key.to_owned())
}

/// What an `Authorization` header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// `Basic base64(user:password)`: the user name (Segment's write key).
    Basic(String),
}

/// The header's credential; schemes match case-insensitively (RFC 9110),
/// `None` for another scheme, an empty credential or undecodable Basic.
pub fn authorization(header: &str) -> Option<Authorization<'_>> {
    let (scheme, rest) = trim_http_whitespace(header).split_once(' ')?;
    let rest = trim_http_whitespace(rest);
    if rest.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(Authorization::Bearer(rest))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(base64_decode(rest)?).ok()?;
        let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
        Some(Authorization::Basic(user.to_owned()))
    } else {
        None
    }
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(header: &str) -> Option<&str> {
    match authorization(header)? {
        Authorization::Bearer(token) => Some(token),
        Authorization::Basic(_) => None,
    }
}

/// Standard or URL-safe base64 (padding optional); `None` when it is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in text.trim_end_matches('=').bytes() {
        let v = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stored_as_sha256() {
        assert_eq!(
            key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(hex(&secret_hash("abc")), key_hash("abc"));
    }

    #[test]
    fn key_from_header_or_query() {
        assert_eq!(extract_key(Some("Bearer sk_1"), None).unwrap(), "sk_1");
        assert_eq!(extract_key(Some("bearer   sk_1 "), None).unwrap(), "sk_1");
        assert_eq!(extract_key(None, Some("sk_2")).unwrap(), "sk_2");
        assert_eq!(
            extract_key(Some("Bearer sk_1"), Some("sk_2")).unwrap(),
            "sk_1"
        );
        // A non-bearer header falls back to the query.
        assert_eq!(
            extract_key(Some("Basic abc"), Some("sk_2")).unwrap(),
            "sk_2"
        );
        assert_eq!(extract_key(Some("Basic abc"), None), Err(Error::MissingKey));
        assert_eq!(extract_key(None, None), Err(Error::MissingKey));
        assert_eq!(
            extract_key(Some("Bearer "), Some("")),
            Err(Error::MissingKey)
        );
        assert_eq!(
            extract_key(None, Some(&"k".repeat(MAX_KEY_LEN + 1))),
            Err(Error::InvalidKey)
        );
        assert_eq!(extract_key(None, Some("bad key")), Err(Error::InvalidKey));
    }

    /// Only HTTP whitespace (space, tab) is trimmed from a credential; a
    /// non-breaking space or any other Unicode space makes it another key.
    #[test]
    fn only_http_whitespace_is_trimmed_from_a_key() {
        assert_eq!(extract_key(Some("Bearer \tsk_1\t "), None).unwrap(), "sk_1");
        assert_eq!(extract_key(None, Some(" \tsk_2 ")).unwrap(), "sk_2");
        for odd in ['\u{a0}', '\u{2003}', '\u{3000}', '\u{85}', '\u{feff}', '\n'] {
            assert_eq!(
                extract_key(Some(&format!("Bearer sk_1{odd}")), None),
                Err(Error::InvalidKey),
                "{odd:?} after a bearer key"
            );
            assert_eq!(
                extract_key(Some(&format!("Bearer {odd}sk_1")), None),
                Err(Error::InvalidKey),
                "{odd:?} before a bearer key"
            );
            assert_eq!(
                extract_key(None, Some(&format!("sk_2{odd}"))),
                Err(Error::InvalidKey),
                "{odd:?} after a ?key="
            );
        }
        assert_eq!(trim_http_whitespace(" \t a b \t"), "a b");
        assert_eq!(trim_http_whitespace("\u{a0}a\u{a0}"), "\u{a0}a\u{a0}");
        assert_eq!(trim_http_whitespace("\r\na\n"), "\r\na\n");
        assert_eq!(trim_http_whitespace(""), "");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_required() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc \t"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn only_http_whitespace_is_trimmed() {
        assert_eq!(trim_http_whitespace(" \t a b \t"), "a b");
        assert_eq!(trim_http_whitespace("\u{a0}a\u{a0}"), "\u{a0}a\u{a0}");
        assert_eq!(bearer("Bearer key\u{a0}"), Some("key\u{a0}"));
        assert_eq!(bearer("Bearer key\u{2003}"), Some("key\u{2003}"));
    }

    #[test]
    fn basic_gives_the_user_name() {
        // "wk_1:" and "wk_2" (no colon), standard and URL-safe alphabets.
        assert_eq!(
            authorization("Basic d2tfMTo="),
            Some(Authorization::Basic("wk_1".into()))
        );
        assert_eq!(
            authorization("basic d2tfMg"),
            Some(Authorization::Basic("wk_2".into()))
        );
        assert_eq!(authorization("Basic !!!"), None);
        assert_eq!(authorization("Digest x"), None);
    }
}
