//! The pure ICAP layer (RFC 3507) of upload scanning: the bytes of an OPTIONS and a REQMOD
//! request, chunk framing, and what a response head says. No sockets, no clocks, so everything
//! here is unit-tested, property-tested and fuzzed (`fuzz/fuzz_targets/icap_reply.rs`); the
//! client in `mod.rs` does the I/O around it.
//!
//! Written from what c-icap really answers (docs/TESTING.md, "ICAP test bed"): a 204 without
//! `Encapsulated`, an infection reported as a `200` carrying `X-Infection-Found` and a folded
//! `X-Violations-Found`, with an HTTP *response* (`res-hdr`, the block page) where a request
//! was sent.

use thiserror::Error;

mod request;

pub use request::{
    encode_path, options_request, push_chunk, push_preview, reqmod_request, LAST_CHUNK,
    LAST_CHUNK_IEOF,
};

/// The longest response head (status line, headers, blank line) read: a scanner's head is a
/// few hundred bytes, and a peer that sends more is broken or hostile, not slow.
pub const MAX_HEAD: usize = 64 * 1024;

/// `Options-TTL` when the OPTIONS answer has none: an hour, c-icap's own value.
pub const DEFAULT_OPTIONS_TTL: u64 = 3600;

/// The threat named when the scanner flags a file without naming what it found.
pub const UNKNOWN_THREAT: &str = "unknown";

/// The threat named when the scanner answered 200 with the request (changed or echoed)
/// instead of 204 or a block page: see [`answer`].
pub const MODIFIED: &str = "modified by the scanner";

/// A threat name from the scanner is cut to this many characters: it goes into logs and the
/// audit log, and no scanner's name for a signature is near it.
const MAX_THREAT: usize = 200;

/// What is wrong with what the scanner sent. Texts from the peer are cut short and shown with
/// `{:?}`, so a hostile answer cannot forge a log line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("response head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("bad status line {0:?}")]
    StatusLine(String),
    #[error("bad header line {0:?}")]
    HeaderLine(String),
    #[error("a continuation line before any header")]
    OrphanContinuation,
    #[error("bad Encapsulated header {0:?}")]
    Encapsulated(String),
    #[error("no {0} header")]
    Missing(&'static str),
    #[error("bad {name} header {value:?}")]
    BadValue { name: &'static str, value: String },
    #[error("the service does not offer REQMOD (Methods: {0:?})")]
    NoReqmod(String),
    #[error("unexpected status {0}")]
    UnexpectedStatus(u16),
}

/// Finds the end of a response head in a buffer that grows as bytes arrive, scanning each byte
/// once (a peer sending one byte at a time costs no more than one sending all at once). Lines
/// end in LF, a CR before it optional; the head ends at the first empty line.
#[derive(Debug, Default)]
pub struct HeadFinder {
    /// Where the line being scanned starts.
    line_start: usize,
    /// How far the buffer has been searched for LF.
    scanned: usize,
}

impl HeadFinder {
    /// `Some(n)` when `buf[..n]` is a whole head, blank line included. `buf` must be the same
    /// buffer as on the previous call, grown at its end.
    pub fn find(&mut self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let mut pos = self.scanned.min(buf.len());
        while let Some(i) = buf
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let end = pos + i;
            let line = buf.get(self.line_start..end).unwrap_or_default();
            if line.is_empty() || line == b"\r" {
                return if end < MAX_HEAD {
                    Ok(Some(end + 1))
                } else {
                    Err(WireError::HeadTooLong)
                };
            }
            self.line_start = end + 1;
            pos = end + 1;
        }
        self.scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Err(WireError::HeadTooLong);
        }
        Ok(None)
    }
}

/// An ICAP response's status line and headers, folded headers unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    status: u16,
    reason: String,
    headers: Vec<Header>,
}

/// One header: its first line's value, then each continuation line's, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    name: String,
    lines: Vec<String>,
}

/// Parses a response head (what [`HeadFinder`] delimited; anything after its blank line is
/// ignored). Status `ICAP/1.x NNN reason` with NNN in 100..=599; headers `Name: value`, a line
/// that starts with a space or tab continuing the one before (c-icap folds
/// `X-Violations-Found` so).
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, WireError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (status, reason) = parse_status_line(lines.next().unwrap_or_default())?;
    let mut headers: Vec<Header> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            let last = headers.last_mut().ok_or(WireError::OrphanContinuation)?;
            last.lines.push(text(line));
            continue;
        }
        let bad = || WireError::HeaderLine(excerpt(line));
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let (name, value) = (line.get(..colon), line.get(colon + 1..));
        let (Some(name), Some(value)) = (name, value) else {
            return Err(bad());
        };
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad());
        }
        headers.push(Header {
            name: String::from_utf8_lossy(name).into_owned(),
            lines: vec![text(value)],
        });
    }
    Ok(ResponseHead {
        status,
        reason,
        headers,
    })
}

fn parse_status_line(line: &[u8]) -> Result<(u16, String), WireError> {
    let bad = || WireError::StatusLine(excerpt(line));
    let (version, rest) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (line.get(..sp), line.get(sp + 1..)),
        None => return Err(bad()),
    };
    let (Some(version), Some(rest)) = (version, rest) else {
        return Err(bad());
    };
    let minor = version.strip_prefix(b"ICAP/1.").ok_or_else(bad)?;
    if minor.is_empty() || !minor.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let (code, reason) = match rest.split_first_chunk::<3>() {
        Some((code, [])) => (code, &[][..]),
        Some((code, [b' ', reason @ ..])) => (code, reason),
        _ => return Err(bad()),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..600).contains(&status) {
        return Err(bad());
    }
    Ok((status, clean(&text(reason), MAX_THREAT)))
}

impl ResponseHead {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase, control characters replaced: fit for a log line.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn find(&self, name: &str) -> Option<&Header> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// The first header called `name` (any case), its continuation lines joined with a space
    /// as RFC 7230's unfolding does.
    pub fn header(&self, name: &str) -> Option<String> {
        self.find(name).map(|h| h.lines.join(" "))
    }

    /// Whether the server will close the connection after this response (`Connection:
    /// close`), so it must not go back to the pool.
    pub fn closes(&self) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Connection"))
            .flat_map(|h| h.lines.iter().flat_map(|l| l.split(',')))
            .any(|token| token.trim().eq_ignore_ascii_case("close"))
    }

    /// The `Encapsulated` header, `None` when absent (c-icap's 204 and 100 carry none).
    pub fn encapsulated(&self) -> Result<Option<Encapsulated>, WireError> {
        self.header("Encapsulated")
            .map(|v| Encapsulated::parse(&v))
            .transpose()
    }

    /// `ISTag`, the service's version of its rules (c-icap: `CI0001-` and a hash of the engine's
    /// signatures), for logs: which scanner state judged a file.
    pub fn istag(&self) -> Option<String> {
        self.header("ISTag")
            .map(|t| clean(&t, MAX_THREAT))
            .filter(|t| !t.is_empty())
    }

    /// The threat a flagged answer names: `Threat=` of `X-Infection-Found` (RFC 3507's draft
    /// extensions, c-icap and most scanners), else `X-Virus-ID` (Symantec, Kaspersky), else the
    /// name line of `X-Violations-Found` (count, then per violation: file, name, id,
    /// disposition). `Some("unknown")` when one of them is there without a name, `None` when
    /// none is there at all.
    pub fn threat(&self) -> Option<String> {
        let mut flagged = false;
        if let Some(found) = self.header("X-Infection-Found") {
            flagged = true;
            let threat = found
                .split(';')
                .filter_map(|p| p.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("Threat"))
                .map(|(_, value)| value.trim().to_string());
            if let Some(name) = threat.filter(|t| !t.is_empty()) {
                return Some(clean(&name, MAX_THREAT));
            }
        }
        if let Some(id) = self.header("X-Virus-ID") {
            flagged = true;
            if !id.is_empty() && id != "-" {
                return Some(clean(&id, MAX_THREAT));
            }
        }
        if let Some(violations) = self.find("X-Violations-Found") {
            flagged = true;
            if let Some(name) = violations.lines.get(2).filter(|n| !n.is_empty()) {
                return Some(clean(name, MAX_THREAT));
            }
        }
        flagged.then(|| UNKNOWN_THREAT.to_string())
    }
}

/// One section named in `Encapsulated` (RFC 3507 section 4.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    ReqHdr,
    ResHdr,
    ReqBody,
    ResBody,
    NullBody,
    OptBody,
}

impl Section {
    const ALL: [(Section, &'static str); 6] = [
        (Section::ReqHdr, "req-hdr"),
        (Section::ResHdr, "res-hdr"),
        (Section::ReqBody, "req-body"),
        (Section::ResBody, "res-body"),
        (Section::NullBody, "null-body"),
        (Section::OptBody, "opt-body"),
    ];

    fn is_body(self) -> bool {
        matches!(
            self,
            Section::ReqBody | Section::ResBody | Section::NullBody | Section::OptBody
        )
    }

    pub fn name(self) -> &'static str {
        Section::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }
}

/// The sections of an encapsulated message and their offsets: each section once, offsets never
/// decreasing, exactly one body section (`null-body` when there is none) and it last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encapsulated(Vec<(Section, u64)>);

impl Encapsulated {
    pub fn parse(value: &str) -> Result<Encapsulated, WireError> {
        let bad = || WireError::Encapsulated(excerpt(value.as_bytes()));
        let mut sections: Vec<(Section, u64)> = Vec::new();
        for entry in value.split(',') {
            let (name, offset) = entry.split_once('=').ok_or_else(bad)?;
            let (name, offset) = (name.trim(), offset.trim());
            let section = Section::ALL
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(name))
                .map(|(s, _)| *s)
                .ok_or_else(bad)?;
            // Digits only: `u64::from_str` would take a sign.
            if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let offset: u64 = offset.parse().map_err(|_| bad())?;
            let after_body = sections.last().is_some_and(|(s, _)| s.is_body());
            let backwards = sections.last().is_some_and(|(_, o)| *o > offset);
            let twice = sections.iter().any(|(s, _)| *s == section);
            if after_body || backwards || twice {
                return Err(bad());
            }
            sections.push((section, offset));
        }
        if !sections.last().is_some_and(|(s, _)| s.is_body()) {
            return Err(bad());
        }
        Ok(Encapsulated(sections))
    }

    pub fn has(&self, section: Section) -> bool {
        self.0.iter().any(|(s, _)| *s == section)
    }

    /// The body section (the last) and its offset.
    pub fn body(&self) -> Option<(Section, u64)> {
        self.0.last().copied()
    }

    pub fn sections(&self) -> &[(Section, u64)] {
        &self.0
    }
}

impl std::fmt::Display for Encapsulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (section, offset)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}={offset}", section.name())?;
        }
        Ok(())
    }
}

/// What the scanner decided about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected { threat: String },
}

/// What one REQMOD response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `100 Continue` after a preview: send the rest.
    Continue,
    Verdict(Verdict),
    /// A 4xx or 5xx: the scanner could not judge (c-icap answers 500 when clamd is gone).
    Failed {
        status: u16,
        reason: String,
    },
}

/// The meaning of a REQMOD response head. 204 is clean. A 200 that names a threat, or whose
/// `Encapsulated` holds an HTTP response (`res-hdr`: the block page c-icap sends in place of the
/// request) is infected. Any other 200 carries the request back, changed or merely echoed: the
/// gateway forwards the client's spooled file as it is and cannot forward a body the scanner
/// rewrote (a disinfected or truncated file), and a scanner configured to report infections
/// only by cutting the body (c-icap's `StartSendPercentDataAfter 0`, docs/TESTING.md) answers
/// exactly so, so such a 200 blocks the upload as [`MODIFIED`]: failing safe, never passing a
/// file the scanner did not call clean.
pub fn answer(head: &ResponseHead) -> Result<Answer, WireError> {
    match head.status {
        100 => Ok(Answer::Continue),
        204 => Ok(Answer::Verdict(Verdict::Clean)),
        200 => {
            if let Some(threat) = head.threat() {
                return Ok(Answer::Verdict(Verdict::Infected { threat }));
            }
            let encapsulated = head
                .encapsulated()?
                .ok_or(WireError::Missing("Encapsulated"))?;
            let threat = if encapsulated.has(Section::ResHdr) {
                UNKNOWN_THREAT
            } else {
                MODIFIED
            };
            Ok(Answer::Verdict(Verdict::Infected {
                threat: threat.to_string(),
            }))
        }
        400..=599 => Ok(Answer::Failed {
            status: head.status,
            reason: head.reason.clone(),
        }),
        other => Err(WireError::UnexpectedStatus(other)),
    }
}

/// What an OPTIONS answer says about the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Bytes to send before the server decides whether it wants the rest; `None`: the server
    /// takes no preview, the whole body goes at once.
    pub preview: Option<u64>,
    /// Seconds the answer stays valid.
    pub ttl: u64,
    pub istag: Option<String>,
}

impl ServiceOptions {
    /// From a 200 answer to OPTIONS (the caller checks the status). `Methods` must include
    /// REQMOD: a RESPMOD-only service would refuse every scan, better said once at the start.
    pub fn from_head(head: &ResponseHead) -> Result<ServiceOptions, WireError> {
        let methods = head
            .header("Methods")
            .ok_or(WireError::Missing("Methods"))?;
        if !methods
            .split(',')
            .any(|m| m.trim().eq_ignore_ascii_case("REQMOD"))
        {
            return Err(WireError::NoReqmod(excerpt(methods.as_bytes())));
        }
        let number = |name: &'static str| -> Result<Option<u64>, WireError> {
            let Some(value) = head.header(name) else {
                return Ok(None);
            };
            match value.parse::<u64>() {
                Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
                _ => Err(WireError::BadValue {
                    name,
                    value: excerpt(value.as_bytes()),
                }),
            }
        };
        Ok(ServiceOptions {
            preview: number("Preview")?,
            ttl: number("Options-TTL")?.unwrap_or(DEFAULT_OPTIONS_TTL),
            istag: head.istag(),
        })
    }
}

/// RFC 7230's token characters, what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header value or reason phrase as text, leading and trailing blanks trimmed.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches([' ', '\t'])
        .to_string()
}

/// `s` with control characters replaced by `?` and cut to `max` characters: a name from the
/// scanner that reaches a log line or a client's reply stays one line.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect()
}

/// The start of a bad line, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(80).collect()
}

#[cfg(test)]
mod tests;
