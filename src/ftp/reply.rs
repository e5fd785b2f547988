//! Server replies (RFC 959 §4.2): `xyz text`, or a multi-line reply from `xyz-` to `xyz text`.
//!
//! A multi-line reply is relayed whole. Lines inside it that start with digits are just text:
//! only a line starting with the same code and a space ends it.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply line does not start with a three-digit code")]
    BadCode,
    #[error("reply longer than {0} bytes")]
    TooLong(usize),
}

/// One complete reply, kept as the bytes to send on (CRLF line endings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    wire: Vec<u8>,
}

impl Reply {
    /// A single-line reply of our own.
    pub fn new(code: u16, text: &str) -> Reply {
        Reply {
            code,
            wire: format!("{code} {text}\r\n").into_bytes(),
        }
    }

    /// The 426 a client hears for a transfer cut short (RFC 959 §4.2), whatever the backend
    /// called it.
    pub fn transfer_aborted() -> Reply {
        Reply::new(426, "Connection closed; transfer aborted.")
    }

    /// A multi-line reply of our own: `first` on the opening line, `body` lines as given
    /// (callers indent them), `last` on the closing line.
    pub fn multi<S: AsRef<str>>(code: u16, first: &str, body: &[S], last: &str) -> Reply {
        let mut text = format!("{code}-{first}\r\n");
        for line in body {
            text.push_str(line.as_ref());
            text.push_str("\r\n");
        }
        text.push_str(&format!("{code} {last}\r\n"));
        Reply {
            code,
            wire: text.into_bytes(),
        }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    /// 1xx: more replies follow for the same command.
    pub fn is_preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.wire
    }

    /// The text of all lines, without codes, for parsing (PASV) and logs.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.wire);
        let mut out = String::new();
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            let coded = line
                .get(..3)
                .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
                && matches!(line.as_bytes().get(3), Some(b' ' | b'-'));
            let body = match line.get(4..) {
                Some(body) if coded => body,
                _ => line,
            };
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(body);
        }
        out
    }

    /// The lines between the first and the last of a multi-line reply (FEAT's feature list).
    pub fn body_lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.wire);
        let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        match lines.as_slice() {
            [_, body @ .., _] => body.iter().map(|s| s.to_string()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Builds [`Reply`]s from backend lines.
#[derive(Debug)]
pub struct ReplyAssembler {
    /// The code of the multi-line reply being read, if any.
    open: Option<u16>,
    wire: Vec<u8>,
    max: usize,
}

impl ReplyAssembler {
    /// `max` bounds a whole reply, so a hostile backend cannot make us buffer without limit.
    pub fn new(max: usize) -> Self {
        Self {
            open: None,
            wire: Vec::new(),
            max,
        }
    }

    /// Feeds one line (without terminator); returns the reply once it is complete.
    pub fn push(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        if self.wire.len() + line.len() + 2 > self.max {
            self.open = None;
            self.wire.clear();
            return Err(ReplyError::TooLong(self.max));
        }
        let code = parse_code(line);
        match self.open {
            None => {
                let code = code.ok_or(ReplyError::BadCode)?;
                self.append(line);
                if line.get(3) == Some(&b'-') {
                    self.open = Some(code);
                    return Ok(None);
                }
                Ok(Some(self.take(code)))
            }
            Some(open) => {
                self.append(line);
                let closes = code == Some(open) && line.get(3).is_none_or(|&b| b == b' ');
                if closes {
                    self.open = None;
                    return Ok(Some(self.take(open)));
                }
                Ok(None)
            }
        }
    }

    fn append(&mut self, line: &[u8]) {
        self.wire.extend_from_slice(line);
        self.wire.extend_from_slice(b"\r\n");
    }

    fn take(&mut self, code: u16) -> Reply {
        Reply {
            code,
            wire: std::mem::take(&mut self.wire),
        }
    }
}

/// `Some(code)` when the line starts with a valid reply code (first digit 1-5) followed by
/// nothing, a space or a hyphen.
fn parse_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(digits.first()?) {
        return None;
    }
    if !matches!(line.get(3), None | Some(b' ' | b'-')) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<Reply> {
        let mut a = ReplyAssembler::new(1 << 16);
        lines
            .iter()
            .filter_map(|l| a.push(l.as_bytes()).expect("valid"))
            .collect()
    }

    #[test]
    fn single_line_reply() {
        let r = feed(&["200 OK"]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code(), 200);
        assert_eq!(r[0].as_bytes(), b"200 OK\r\n");
    }

    #[test]
    fn multi_line_reply_is_kept_whole_even_with_digit_lines_inside() {
        let r = feed(&[
            "211-Features:",
            " MDTM",
            "227 Entering Passive Mode (10,0,0,1,4,1)",
            "211-not the end",
            "211 End",
        ]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code(), 211);
        assert_eq!(r[0].body_lines().len(), 3);
        assert!(r[0].as_bytes().ends_with(b"211 End\r\n"));
    }

    #[test]
    fn bare_code_is_a_complete_reply() {
        assert_eq!(feed(&["226"])[0].code(), 226);
    }

    #[test]
    fn garbage_is_refused() {
        let mut a = ReplyAssembler::new(100);
        assert_eq!(a.push(b"hello"), Err(ReplyError::BadCode));
        assert_eq!(a.push(b"600 no"), Err(ReplyError::BadCode));
        assert_eq!(a.push(b"2000 no"), Err(ReplyError::BadCode));
    }

    #[test]
    fn oversized_reply_is_refused() {
        let mut a = ReplyAssembler::new(32);
        assert_eq!(a.push(b"211-start"), Ok(None));
        assert_eq!(a.push(&[b'x'; 40]), Err(ReplyError::TooLong(32)));
        assert_eq!(a.push(b"200 fresh"), Ok(Some(Reply::new(200, "fresh"))));
    }

    #[test]
    fn text_strips_codes() {
        let r = Reply::multi(211, "Features:", &[" EPSV"], "End");
        assert_eq!(r.text(), "Features:\n EPSV\nEnd");
        assert!(Reply::new(150, "x").is_preliminary());
    }
}
