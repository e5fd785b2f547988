//! The requests the client sends: OPTIONS, the REQMOD head with its encapsulated HTTP head,
//! and the chunks of the body.

use std::fmt::Write as _;

/// The end of a chunked body, and the end of a preview that held the whole body (RFC 3507
/// section 4.5: `ieof` tells the server that no `100 Continue` is needed).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
pub const LAST_CHUNK_IEOF: &[u8] = b"0; ieof\r\n\r\n";

const USER_AGENT: &str = concat!("ftpsgate/", env!("CARGO_PKG_VERSION"));

/// `OPTIONS` for the service at `uri` (`icap://host:port/service`), `host` its `Host` header.
pub fn options_request(uri: &str, host: &str) -> Vec<u8> {
    format!(
        "OPTIONS {uri} ICAP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n\
         Encapsulated: null-body=0\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a `REQMOD` that carries an upload of `len` bytes named `name` (the FTP path) as
/// the body of `PUT http://ftpsgate/<name>`, with `Allow: 204` (a clean file comes back as a
/// 204, not echoed whole) and `Preview: n` when the service takes a preview (`n` at most
/// `len`). `Content-Length` is always there: c-icap judges `MaxObjectSize` by it and resets the
/// connection when a body without it grows past the limit (docs/TESTING.md, "Sizes").
///
/// An empty upload is announced as `null-body`, with no preview and nothing after the head:
/// c-icap answers a zero-byte preview with `ieof` by echoing the request (`200 OK`, whatever
/// `Allow: 204` says), which reads as modified, while `null-body` gets its `204`.
pub fn reqmod_request(
    uri: &str,
    host: &str,
    name: &str,
    len: u64,
    preview: Option<u64>,
) -> Vec<u8> {
    let http = format!(
        "PUT http://ftpsgate/{} HTTP/1.1\r\nHost: ftpsgate\r\nContent-Length: {len}\r\n\r\n",
        encode_path(name)
    );
    let mut head = format!(
        "REQMOD {uri} ICAP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAllow: 204\r\n"
    );
    let body = if len == 0 { "null-body" } else { "req-body" };
    if let Some(preview) = preview.filter(|_| len > 0) {
        let _ = write!(head, "Preview: {}\r\n", preview.min(len));
    }
    let _ = write!(
        head,
        "Encapsulated: req-hdr=0, {body}={}\r\n\r\n",
        http.len()
    );
    head.push_str(&http);
    head.into_bytes()
}

/// The FTP path as the path of an HTTP URL: unreserved characters and `/` as they are, every
/// other byte (spaces, `%`, `?`, `#`, non-ASCII) percent-encoded, one leading `/` dropped.
pub fn encode_path(name: &str) -> String {
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Appends `data` as one chunk (`SIZE-IN-HEX CRLF data CRLF`). Empty data appends nothing: a
/// chunk of size 0 is the end of the body.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(ByteWriter(out), "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a preview: `data` as one chunk and the end of the preview, `ieof` when `data` is
/// the whole body.
pub fn push_preview(out: &mut Vec<u8>, data: &[u8], ieof: bool) {
    push_chunk(out, data);
    out.extend_from_slice(if ieof { LAST_CHUNK_IEOF } else { LAST_CHUNK });
}

/// `fmt::Write` into a byte buffer.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The ICAP head and the encapsulated HTTP head of a request of ours.
    fn split_request(request: &[u8]) -> (String, String) {
        let text = String::from_utf8(request.to_vec()).unwrap();
        let (icap, http) = text.split_once("\r\n\r\n").unwrap();
        (format!("{icap}\r\n\r\n"), http.to_string())
    }

    #[test]
    fn a_reqmod_request_as_c_icap_wants_it() {
        let request = reqmod_request(
            "icap://127.0.0.1:1344/virus_scan",
            "127.0.0.1:1344",
            "/in box/a%b.txt",
            5000,
            Some(1024),
        );
        let (icap, http) = split_request(&request);
        assert_eq!(
            http,
            "PUT http://ftpsgate/in%20box/a%25b.txt HTTP/1.1\r\nHost: ftpsgate\r\n\
             Content-Length: 5000\r\n\r\n"
        );
        let mut lines = icap.lines();
        assert_eq!(
            lines.next(),
            Some("REQMOD icap://127.0.0.1:1344/virus_scan ICAP/1.0")
        );
        let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
        for want in [
            "Host: 127.0.0.1:1344",
            "Allow: 204",
            "Preview: 1024",
            &format!("Encapsulated: req-hdr=0, req-body={}", http.len()),
        ] {
            assert!(headers.contains(&want), "{want} in {headers:?}");
        }
        // A file smaller than the preview announces its size as the preview; no preview, no header.
        let (small, _) = split_request(&reqmod_request("u", "h", "f", 10, Some(1024)));
        assert!(small.contains("Preview: 10\r\n"), "{small}");
        let (none, _) = split_request(&reqmod_request("u", "h", "f", 10, None));
        assert!(!none.contains("Preview"), "{none}");
        // An empty file has no body to preview.
        let (empty, http) = split_request(&reqmod_request("u", "h", "f", 0, Some(1024)));
        assert!(!empty.contains("Preview"), "{empty}");
        assert!(
            empty.contains(&format!(
                "Encapsulated: req-hdr=0, null-body={}\r\n",
                http.len()
            )),
            "{empty}"
        );
        assert!(http.ends_with("Content-Length: 0\r\n\r\n"), "{http}");
        assert_eq!(
            options_request("icap://h:1344/s", "h:1344")
                .split(|&b| b == b'\n')
                .next(),
            Some(&b"OPTIONS icap://h:1344/s ICAP/1.0\r"[..])
        );
    }

    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(encode_path("/a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(encode_path("rel/x y"), "rel/x%20y");
        assert_eq!(encode_path("/q?#%\r\n"), "q%3F%23%25%0D%0A");
        assert_eq!(encode_path("/é"), "%C3%A9");
        assert_eq!(encode_path("//x"), "/x");
    }

    /// Decodes a chunked body strictly (test side): the data, and whether it ended with `ieof`.
    fn dechunk(mut wire: &[u8]) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        loop {
            let nl = wire
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("size line");
            let line = std::str::from_utf8(&wire[..nl]).unwrap();
            let (size, ext) = line.split_once(';').unwrap_or((line, ""));
            let size = usize::from_str_radix(size, 16).expect("hex size");
            wire = &wire[nl + 2..];
            if size == 0 {
                assert_eq!(wire, b"\r\n", "the last chunk ends the body");
                return (data, ext.trim() == "ieof");
            }
            data.extend_from_slice(&wire[..size]);
            assert_eq!(&wire[size..size + 2], b"\r\n");
            wire = &wire[size + 2..];
        }
    }

    #[test]
    fn chunk_framing() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello, world");
        assert_eq!(out, b"c\r\nhello, world\r\n");
        push_chunk(&mut out, b"");
        assert_eq!(
            out, b"c\r\nhello, world\r\n",
            "no empty chunk: it would end the body"
        );
        let mut preview = Vec::new();
        push_preview(&mut preview, b"abc", true);
        assert_eq!(preview, b"3\r\nabc\r\n0; ieof\r\n\r\n");
        let mut empty = Vec::new();
        push_preview(&mut empty, b"", true);
        assert_eq!(empty, LAST_CHUNK_IEOF);
        let mut part = Vec::new();
        push_preview(&mut part, &[7; 1024], false);
        assert_eq!(dechunk(&part), (vec![7; 1024], false));
    }

    proptest! {
        #[test]
        fn a_preview_dechunks_to_its_data(data in proptest::collection::vec(any::<u8>(), 0..3000), ieof: bool) {
            let mut out = Vec::new();
            push_preview(&mut out, &data, ieof);
            prop_assert_eq!(dechunk(&out), (data, ieof));
        }

        #[test]
        fn encoded_paths_are_one_clean_token(name in "\\PC{0,40}") {
            let encoded = encode_path(&name);
            prop_assert!(encoded.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert!(!encoded.contains(['?', '#']));
        }
    }
}
