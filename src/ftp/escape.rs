//! Client-supplied text on its way into a log line.
//!
//! Why. Commands, paths, user names and TLS server names come from whoever connects. Logged
//! raw, an escape sequence in a path drives the terminal of whoever reads the log, and a bare
//! CR or LF forges a line of its own. Every such field is written through [`Escaped`], which
//! turns control characters, backslashes and bytes that are not UTF-8 into visible escapes, so
//! one client field is always one piece of one log line.

use std::fmt;

/// Displays bytes with every control character, backslash and invalid UTF-8 byte escaped
/// (`\u{1b}`, `\\`, `\xff`); printable text, non-ASCII letters included, is kept as it is.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() || c == '\\' {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Escaped`] as an owned string, for span fields recorded once.
pub fn escaped(s: &str) -> String {
    Escaped(s.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_bytes_become_visible_escapes() {
        let shown = Escaped(b"a\x1b[31mred\r\nforged\x07 \\ \xff caf\xc3\xa9").to_string();
        assert_eq!(shown, "a\\u{1b}[31mred\\r\\nforged\\u{7} \\\\ \\xff café");
        assert!(shown.chars().all(|c| !c.is_control()));
    }
}
