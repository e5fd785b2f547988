//! Control-channel framing: bytes in, lines out.
//!
//! FTP control traffic is a byte stream; TCP and TLS may split or merge lines anywhere, so the
//! proxy reassembles lines here and never reasons about packets. The framer is pure (no I/O) so
//! it can be fuzzed and unit-tested; the session feeds it whatever the socket produced.

use thiserror::Error;

/// Why a line was refused. Each maps to a `500` reply on the client side and to a dropped
/// session on the backend side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LineError {
    #[error("line too long")]
    TooLong,
    #[error("NUL byte in line")]
    Nul,
    #[error("bare CR in line")]
    BareCr,
    #[error("line not terminated by CRLF")]
    BareLf,
}

/// Who is talking. Clients are held to RFC 959 strictly (CRLF, no NUL, Telnet IAC stripped)
/// because their lines are forwarded; backends are allowed bare LF since some old servers send
/// it and we only read, never forward, their line structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Backend,
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    peer: Peer,
    /// Set after an overlong line was reported: the rest of it, up to the next LF, is skipped
    /// so the session can carry on with the next command.
    discarding: bool,
}

impl LineFramer {
    pub fn new(max: usize, peer: Peer) -> Self {
        Self {
            buf: Vec::with_capacity(256),
            max,
            peer,
            discarding: false,
        }
    }

    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when bytes are buffered that do not yet form a line. Checked before a TLS upgrade:
    /// anything pipelined behind `AUTH TLS` arrived in the clear and must not be trusted
    /// (the STARTTLS command-injection class of bugs).
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete line without its terminator, `None` when more bytes are needed.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        loop {
            let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > self.max {
                    self.buf.clear();
                    if !self.discarding {
                        self.discarding = true;
                        return Some(Err(LineError::TooLong));
                    }
                }
                return None;
            };
            let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
            if self.discarding {
                self.discarding = false;
                continue;
            }
            line.pop(); // the LF
            if line.len() > self.max {
                return Some(Err(LineError::TooLong));
            }
            return Some(self.check(line));
        }
    }

    fn check(&self, mut line: Vec<u8>) -> Result<Vec<u8>, LineError> {
        let had_cr = line.last() == Some(&b'\r');
        if had_cr {
            line.pop();
        }
        if self.peer == Peer::Backend {
            return Ok(line);
        }
        if !had_cr {
            return Err(LineError::BareLf);
        }
        if line.contains(&0) {
            return Err(LineError::Nul);
        }
        if line.contains(&b'\r') {
            return Err(LineError::BareCr);
        }
        Ok(strip_telnet(line))
    }
}

const IAC: u8 = 0xFF;

/// Removes Telnet IAC sequences (RFC 854) from a client line. Clients send `IAC IP IAC DM`
/// before `ABOR`; those bytes mean nothing to a backend reached through us. `IAC IAC` is a
/// literal 0xFF byte.
pub fn strip_telnet(line: Vec<u8>) -> Vec<u8> {
    if !line.contains(&IAC) {
        return line;
    }
    let mut out = Vec::with_capacity(line.len());
    let mut bytes = line.into_iter();
    while let Some(b) = bytes.next() {
        if b != IAC {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(IAC) => out.push(IAC),
            // WILL, WONT, DO, DONT carry an option byte.
            Some(0xFB..=0xFE) => {
                bytes.next();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> LineFramer {
        LineFramer::new(16, Peer::Client)
    }

    #[test]
    fn lines_split_across_reads_are_reassembled() {
        let mut f = client();
        f.extend(b"NO");
        assert_eq!(f.next_line(), None);
        f.extend(b"OP\r\nPW");
        assert_eq!(f.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert_eq!(f.next_line(), None);
        assert!(f.has_pending());
        f.extend(b"D\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"PWD".to_vec())));
        assert!(!f.has_pending());
    }

    #[test]
    fn overlong_line_is_reported_once_and_the_next_line_survives() {
        let mut f = client();
        f.extend(&[b'A'; 40]);
        assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
        f.extend(&[b'A'; 40]);
        assert_eq!(f.next_line(), None);
        f.extend(b"AAA\r\nNOOP\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"NOOP".to_vec())));
    }

    #[test]
    fn overlong_complete_line_is_refused() {
        let mut f = client();
        let mut line = vec![b'B'; 17];
        line.extend_from_slice(b"\r\nNOOP\r\n");
        f.extend(&line);
        assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
        assert_eq!(f.next_line(), Some(Ok(b"NOOP".to_vec())));
    }

    #[test]
    fn client_lines_need_crlf_and_no_nul_or_bare_cr() {
        let mut f = client();
        f.extend(b"NOOP\nA\0B\r\nA\rB\r\n");
        assert_eq!(f.next_line(), Some(Err(LineError::BareLf)));
        assert_eq!(f.next_line(), Some(Err(LineError::Nul)));
        assert_eq!(f.next_line(), Some(Err(LineError::BareCr)));
    }

    #[test]
    fn backend_lines_may_end_in_bare_lf() {
        let mut f = LineFramer::new(16, Peer::Backend);
        f.extend(b"220 hi\n200 ok\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"220 hi".to_vec())));
        assert_eq!(f.next_line(), Some(Ok(b"200 ok".to_vec())));
    }

    #[test]
    fn telnet_sequences_are_stripped_from_abor() {
        let mut f = client();
        f.extend(b"\xff\xf4\xff\xf2ABOR\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"ABOR".to_vec())));
        assert_eq!(
            strip_telnet(b"a\xff\xffb\xff\xfb\x01c".to_vec()),
            b"a\xffbc"
        );
    }
}
