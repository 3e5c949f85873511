//! Client text that names or identifies something (event names, ids): the
//! one check both doors run on it.

/// Why `value` (the client's `field`) is not acceptable text of at most `max`
/// characters: empty, too long, a control character, or nothing visible.
pub fn check(value: &str, field: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("`{field}` must not be empty"))
    } else if value.chars().count() > max {
        Err(format!("`{field}` is longer than {max} characters"))
    } else if value.chars().any(char::is_control) {
        Err(format!("`{field}` contains a control character"))
    } else if is_visibly_empty(value) {
        Err(format!(
            "`{field}` must not be blank (only whitespace or invisible characters)"
        ))
    } else {
        Ok(())
    }
}

/// The first `max` characters of `text` (all of it when shorter), without
/// copying: the cap on client and runtime text the doors keep (user agents,
/// `request.cf` fields). Text of at most `max` bytes is returned as is.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Whether `text` shows nothing: every character is whitespace (Unicode
/// `White_Space`, U+00A0 and U+3000 included) or invisible (zero-width
/// characters, joiners, the BOM, bidi marks, fillers, variation selectors,
/// tags, ...). The empty string is visibly empty. Not part of
/// `Envelope::validate`: the backend stays as lenient as envelopes already
/// queued by an older edge need it to be.
pub fn is_visibly_empty(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || is_invisible(c))
}

/// Characters that render as nothing: Unicode's `Default_Ignorable_Code_Point`
/// set plus the blank-looking fillers (Hangul fillers, the Braille blank).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' // soft hyphen
            | '\u{034F}' // combining grapheme joiner
            | '\u{061C}' // Arabic letter mark
            | '\u{115F}'..='\u{1160}' // Hangul choseong / jungseong fillers
            | '\u{17B4}'..='\u{17B5}' // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}' // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space, ZWNJ, ZWJ, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, isolates
            | '\u{2800}' // Braille pattern blank
            | '\u{3164}' // Hangul filler
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{FEFF}' // zero-width no-break space (BOM)
            | '\u{FFA0}' // halfwidth Hangul filler
            | '\u{FFF0}'..='\u{FFF8}' // unassigned specials
            | '\u{1BCA0}'..='\u{1BCA3}' // shorthand format controls
            | '\u{1D173}'..='\u{1D17A}' // musical formatting
            | '\u{E0000}'..='\u{E0FFF}' // tags, variation selectors supplement
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keeps_at_most_max_characters() {
        assert_eq!(prefix("abc", 5), "abc");
        assert_eq!(prefix("abcdef", 3), "abc");
        assert_eq!(prefix("", 0), "");
        assert_eq!(prefix("abc", 0), "");
        // Multi-byte characters count once and are never cut in half.
        assert_eq!(prefix("äöüß", 2), "äö");
        assert_eq!(prefix("äöüß", 4), "äöüß");
        assert_eq!(prefix("日本語テキスト", 3), "日本語");
    }

    #[test]
    fn blank_and_invisible_text_is_visibly_empty() {
        for text in [
            "",
            " ",
            "   ",
            "\u{a0}",
            "\u{200b}",
            "\u{200c}",
            "\u{200d}",
            "\u{2060}",
            "\u{feff}",
            "\u{200b}\u{200c}\u{200d}\u{2060}\u{feff}",
            " \u{a0}\u{2003}\u{3000}\u{202f}\u{205f}\u{1680}",
            "\u{ad}\u{34f}\u{115f}\u{3164}\u{2800}\u{fe0f}\u{e0020}",
            "\u{200e}\u{202e}\u{2066}",
        ] {
            assert!(is_visibly_empty(text), "{text:?}");
        }
        for text in ["a", " a ", "\u{200b}x", "é", "😀", "\u{a0}0", "-", "."] {
            assert!(!is_visibly_empty(text), "{text:?}");
        }
    }

    #[test]
    fn check_says_what_is_wrong() {
        assert_eq!(check("signup", "event", 200), Ok(()));
        assert_eq!(
            check("", "event", 200),
            Err("`event` must not be empty".into())
        );
        assert!(check("xx", "id", 1).unwrap_err().contains("longer than 1"));
        assert!(check("a\u{7}", "id", 9).unwrap_err().contains("control"));
        assert_eq!(
            check("\u{200b}\u{a0}", "user_id", 200),
            Err("`user_id` must not be blank (only whitespace or invisible characters)".into())
        );
    }
}
