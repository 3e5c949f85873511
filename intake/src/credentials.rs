//! Credentials in requests: the `Authorization` header's schemes, and the
//! HTTP-whitespace trimming every credential goes through.

/// `text` without leading and trailing HTTP whitespace (space and tab, RFC
/// 9110 `OWS`). Not `str::trim`: a key followed by U+00A0 or any other
/// Unicode space is another key, not this one.
pub fn trim_http_whitespace(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
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
