//! Untrusted text made safe for a log line.
//!
//! [`Escaped`] displays a string with every control character (`\n`, `\r`, ESC, the
//! other C0 and C1 controls), the line and paragraph separators U+2028 and U+2029, and
//! the invisible format characters (bidirectional overrides, zero-width marks) written
//! as visible escapes, and backslashes doubled so that an escape cannot be forged. A
//! request-controlled field logged through it can neither start a new log line nor send
//! a terminal escape sequence.

use std::fmt::{self, Write as _};

/// Displays a string with control and format characters escaped (`\n`, `\r`, `\t`,
/// `\\`, else `\u{…}`); use it for request-controlled strings in `tracing` fields:
/// `tracing::warn!(path = %Escaped(path), "…")`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

/// Whether `c` must not reach a log line as is.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if !s.chars().any(needs_escape) {
            return f.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_format_characters_become_visible_escapes() {
        let s = Escaped("a\nb\r\x1b[31mc\u{2028}d\u{202e}e\\n\u{85}").to_string();
        assert_eq!(s, "a\\nb\\r\\u{1b}[31mc\\u{2028}d\\u{202e}e\\\\n\\u{85}");
        assert!(!s.chars().any(needs_escape_but_backslash));
        assert_eq!(Escaped("plain/path?x=1 é").to_string(), "plain/path?x=1 é");
    }

    fn needs_escape_but_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }
}
