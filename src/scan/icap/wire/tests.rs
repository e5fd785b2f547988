//! The pure ICAP layer against c-icap's real answers (as recorded in docs/TESTING.md, "ICAP
//! test bed") and against generated input.

use proptest::prelude::*;

use super::*;

/// c-icap 0.5.10's answer to OPTIONS for `virus_scan`.
const OPTIONS: &[u8] = b"ICAP/1.0 200 OK\r\n\
Methods: RESPMOD, REQMOD\r\n\
Service: C-ICAP/0.5.10 server - Antivirus service\r\n\
ISTag: \"CI0001-L5CkDhq+qWNs+PZ5DxxXsAAA\"\r\n\
Transfer-Preview: *\r\n\
Options-TTL: 3600\r\n\
Date: Thu, 03 Dec 2026 10:00:00 GMT\r\n\
Preview: 1024\r\n\
Allow: 204\r\n\
Encapsulated: null-body=0\r\n\r\n";

/// Its answer to a REQMOD that carried the marker.
const INFECTED: &[u8] = b"ICAP/1.0 200 OK\r\n\
Server: C-ICAP/0.5.10\r\n\
Connection: keep-alive\r\n\
ISTag: \"CI0001-L5CkDhq+qWNs+PZ5DxxXsAAA\"\r\n\
X-Infection-Found: Type=0; Resolution=2; Threat=Ftpsgate.Test.Marker.UNOFFICIAL;\r\n\
X-Violations-Found: 1\r\n\
\t-\r\n\
\tFtpsgate.Test.Marker.UNOFFICIAL\r\n\
\t0\r\n\
\t0\r\n\
Encapsulated: res-hdr=0, res-body=108\r\n\r\n\
HTTP/1.0 403 Forbidden\r\n";

const CLEAN: &[u8] = b"ICAP/1.0 204 Unmodified\r\n\
Server: C-ICAP/0.5.10\r\n\
Connection: keep-alive\r\n\
ISTag: \"CI0001-L5CkDhq+qWNs+PZ5DxxXsAAA\"\r\n\r\n";

const CLAMD_GONE: &[u8] =
    b"ICAP/1.0 500 Server error\r\nServer: C-ICAP/0.5.10\r\nConnection: close\r\n\r\n";

/// A clean file without `Allow: 204`: the request echoed.
const ECHOED: &[u8] = b"ICAP/1.0 200 OK\r\n\
Server: C-ICAP/0.5.10\r\n\
Connection: keep-alive\r\n\
Encapsulated: req-hdr=0, req-body=120\r\n\r\n";

fn head(bytes: &[u8]) -> ResponseHead {
    let n = HeadFinder::default()
        .find(bytes)
        .expect("finder")
        .expect("a whole head");
    parse_response_head(&bytes[..n]).expect("head")
}

fn infected(threat: &str) -> Answer {
    Answer::Verdict(Verdict::Infected {
        threat: threat.to_string(),
    })
}

#[test]
fn c_icap_answers_mean_what_they_say() {
    assert_eq!(answer(&head(CLEAN)), Ok(Answer::Verdict(Verdict::Clean)));
    assert_eq!(
        answer(&head(INFECTED)),
        Ok(infected("Ftpsgate.Test.Marker.UNOFFICIAL"))
    );
    assert_eq!(
        answer(&head(CLAMD_GONE)),
        Ok(Answer::Failed {
            status: 500,
            reason: "Server error".into()
        })
    );
    assert_eq!(answer(&head(ECHOED)), Ok(infected(MODIFIED)));
    assert_eq!(
        answer(&head(b"ICAP/1.0 100 Continue\r\n\r\n")),
        Ok(Answer::Continue)
    );
    assert!(head(CLAMD_GONE).closes());
    assert!(!head(CLEAN).closes());
    assert_eq!(head(CLEAN).encapsulated(), Ok(None));
}

#[test]
fn the_head_ends_at_its_blank_line_and_the_body_is_not_part_of_it() {
    let n = HeadFinder::default().find(INFECTED).unwrap().unwrap();
    assert_eq!(&INFECTED[n..], b"HTTP/1.0 403 Forbidden\r\n");
    // Bare LF line ends too.
    let lf = b"ICAP/1.0 204 No\nA: b\n\nrest";
    assert_eq!(HeadFinder::default().find(lf), Ok(Some(lf.len() - 4)));
    assert_eq!(HeadFinder::default().find(b"ICAP/1.0 204 No\r\n"), Ok(None));
}

#[test]
fn the_head_found_byte_by_byte_is_the_head_found_at_once() {
    let mut finder = HeadFinder::default();
    let mut found = None;
    for end in 1..=INFECTED.len() {
        if let Some(n) = finder.find(&INFECTED[..end]).unwrap() {
            found = Some(n);
            break;
        }
    }
    assert_eq!(found, HeadFinder::default().find(INFECTED).unwrap());
}

#[test]
fn an_endless_head_is_an_error_not_a_wait() {
    let mut endless = b"ICAP/1.0 200 OK\r\nX-Pad: ".to_vec();
    endless.resize(MAX_HEAD, b'a');
    assert_eq!(
        HeadFinder::default().find(&endless),
        Err(WireError::HeadTooLong)
    );
    // Endless header lines, each ended.
    let lines = b"X: y\r\n".repeat(MAX_HEAD / 6 + 1);
    let mut many = b"ICAP/1.0 200 OK\r\n".to_vec();
    many.extend_from_slice(&lines);
    assert_eq!(
        HeadFinder::default().find(&many),
        Err(WireError::HeadTooLong)
    );
    // A blank line past the bound is still too far.
    many.extend_from_slice(b"\r\n");
    assert_eq!(
        HeadFinder::default().find(&many),
        Err(WireError::HeadTooLong)
    );
}

#[test]
fn status_lines() {
    for (line, status, reason) in [
        ("ICAP/1.0 204 Unmodified", 204, "Unmodified"),
        ("ICAP/1.0 200 OK", 200, "OK"),
        ("ICAP/1.1 500 Server error", 500, "Server error"),
        ("ICAP/1.0 204", 204, ""),
        ("ICAP/1.0 204 ", 204, ""),
        ("ICAP/1.0 403 bad\u{1b}[2J", 403, "bad?[2J"),
    ] {
        let h = parse_response_head(format!("{line}\r\n\r\n").as_bytes()).expect(line);
        assert_eq!((h.status(), h.reason()), (status, reason), "{line}");
    }
    for line in [
        "",
        "HTTP/1.1 200 OK",
        "ICAP/2.0 200 OK",
        "ICAP/1. 200 OK",
        "ICAP/1.0  200 OK",
        "ICAP/1.0 20 OK",
        "ICAP/1.0 2000 OK",
        "ICAP/1.0 +20 OK",
        "ICAP/1.0 099 Low",
        "ICAP/1.0 600 High",
        "ICAP/1.0",
        "garbage",
    ] {
        assert!(
            matches!(
                parse_response_head(format!("{line}\r\n\r\n").as_bytes()),
                Err(WireError::StatusLine(_))
            ),
            "{line:?}"
        );
    }
}

#[test]
fn folded_headers_are_unfolded() {
    let h = head(INFECTED);
    assert_eq!(
        h.header("x-violations-found").as_deref(),
        Some("1 - Ftpsgate.Test.Marker.UNOFFICIAL 0 0")
    );
    // The header after the folded one is still found.
    assert_eq!(
        h.encapsulated().unwrap().unwrap().sections(),
        &[(Section::ResHdr, 0), (Section::ResBody, 108)]
    );
    let h = head(b"ICAP/1.0 200 OK\r\nA: one\r\n  two \r\n\tthree\r\nB:\r\n\r\n");
    assert_eq!(h.header("A").as_deref(), Some("one two three"));
    assert_eq!(h.header("b").as_deref(), Some(""));
    assert_eq!(h.header("C"), None);
}

#[test]
fn bad_header_lines() {
    for bad in [
        "ICAP/1.0 200 OK\r\n continued\r\n\r\n",
        "ICAP/1.0 200 OK\r\nno colon\r\n\r\n",
        "ICAP/1.0 200 OK\r\n: no name\r\n\r\n",
        "ICAP/1.0 200 OK\r\nBad Name: v\r\n\r\n",
        "ICAP/1.0 200 OK\r\nBad\u{1}: v\r\n\r\n",
    ] {
        assert!(
            matches!(
                parse_response_head(bad.as_bytes()),
                Err(WireError::OrphanContinuation | WireError::HeaderLine(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn threats_are_named_from_any_of_the_headers() {
    let threat = |headers: &str| {
        head(
            format!("ICAP/1.0 200 OK\r\n{headers}Encapsulated: res-hdr=0, res-body=9\r\n\r\n")
                .as_bytes(),
        )
        .threat()
    };
    assert_eq!(
        threat("X-Infection-Found: Type=0; Resolution=2; threat=Eicar;\r\n").as_deref(),
        Some("Eicar")
    );
    assert_eq!(
        threat("X-Virus-ID: Eicar-Test\r\n").as_deref(),
        Some("Eicar-Test")
    );
    assert_eq!(
        threat("X-Violations-Found: 1\r\n\tf.txt\r\n\tW32.Thing\r\n\t9\r\n\t0\r\n").as_deref(),
        Some("W32.Thing")
    );
    // Flagged without a name.
    assert_eq!(
        threat("X-Infection-Found: Type=0;\r\n").as_deref(),
        Some("unknown")
    );
    assert_eq!(threat("X-Virus-ID: -\r\n").as_deref(), Some("unknown"));
    assert_eq!(
        threat("X-Violations-Found: 1\r\n").as_deref(),
        Some("unknown")
    );
    assert_eq!(threat(""), None);
    // A block page without any of them is still a block.
    assert_eq!(
        answer(&head(
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=50\r\n\r\n"
        )),
        Ok(infected(UNKNOWN_THREAT))
    );
    // A name with a control character or of any length stays one short line.
    let long = format!("X-Virus-ID: a\u{7f}b{}\r\n", "x".repeat(1000));
    let named = threat(&long).unwrap();
    assert!(named.starts_with("a?b") && named.chars().count() == MAX_THREAT);
}

#[test]
fn a_200_needs_a_good_encapsulated_unless_it_names_a_threat() {
    assert_eq!(
        answer(&head(b"ICAP/1.0 200 OK\r\n\r\n")),
        Err(WireError::Missing("Encapsulated"))
    );
    assert!(matches!(
        answer(&head(b"ICAP/1.0 200 OK\r\nEncapsulated: junk\r\n\r\n")),
        Err(WireError::Encapsulated(_))
    ));
    assert_eq!(
        answer(&head(b"ICAP/1.0 200 OK\r\nX-Virus-ID: V\r\n\r\n")),
        Ok(infected("V"))
    );
    assert_eq!(
        answer(&head(b"ICAP/1.0 206 Partial\r\n\r\n")),
        Err(WireError::UnexpectedStatus(206))
    );
    assert_eq!(
        answer(&head(b"ICAP/1.0 404 Service not found\r\n\r\n")),
        Ok(Answer::Failed {
            status: 404,
            reason: "Service not found".into()
        })
    );
}

#[test]
fn encapsulated_values() {
    for (value, sections) in [
        ("null-body=0", vec![(Section::NullBody, 0)]),
        (
            "req-hdr=0, req-body=412",
            vec![(Section::ReqHdr, 0), (Section::ReqBody, 412)],
        ),
        (
            "REQ-HDR=0,RES-HDR=137 ,res-body=296",
            vec![
                (Section::ReqHdr, 0),
                (Section::ResHdr, 137),
                (Section::ResBody, 296),
            ],
        ),
        ("opt-body=0", vec![(Section::OptBody, 0)]),
    ] {
        let e = Encapsulated::parse(value).expect(value);
        assert_eq!(e.sections(), sections.as_slice(), "{value}");
        assert_eq!(e.body(), sections.last().copied());
    }
    for bad in [
        "",
        "req-hdr=0",
        "req-body=0, req-hdr=10",
        "req-hdr=10, req-body=5",
        "req-hdr=0, req-hdr=0, null-body=0",
        "null-body=0, null-body=0",
        "req-hdr=-1, null-body=0",
        "req-hdr=+1, null-body=2",
        "req-hdr=, null-body=0",
        "req-hdr, null-body=0",
        "x-hdr=0, null-body=0",
        "null-body=99999999999999999999",
        "req-hdr=0; null-body=1",
    ] {
        assert!(Encapsulated::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn c_icap_options() {
    let o = ServiceOptions::from_head(&head(OPTIONS)).unwrap();
    assert_eq!(
        o,
        ServiceOptions {
            preview: Some(1024),
            ttl: 3600,
            istag: Some("\"CI0001-L5CkDhq+qWNs+PZ5DxxXsAAA\"".into()),
        }
    );
    let bare = ServiceOptions::from_head(&head(b"ICAP/1.0 200 OK\r\nMethods: REQMOD\r\n\r\n"));
    assert_eq!(
        bare,
        Ok(ServiceOptions {
            preview: None,
            ttl: DEFAULT_OPTIONS_TTL,
            istag: None
        })
    );
    assert!(matches!(
        ServiceOptions::from_head(&head(b"ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\n\r\n")),
        Err(WireError::NoReqmod(_))
    ));
    assert_eq!(
        ServiceOptions::from_head(&head(b"ICAP/1.0 200 OK\r\n\r\n")),
        Err(WireError::Missing("Methods"))
    );
    for bad in ["Preview: -1", "Preview: lots", "Options-TTL: +5"] {
        let text = format!("ICAP/1.0 200 OK\r\nMethods: REQMOD\r\n{bad}\r\n\r\n");
        assert!(
            matches!(
                ServiceOptions::from_head(&head(text.as_bytes())),
                Err(WireError::BadValue { .. })
            ),
            "{bad}"
        );
    }
}

proptest! {
    #[test]
    fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut finder = HeadFinder::default();
        if let Ok(Some(n)) = finder.find(&bytes) {
            prop_assert!(n <= bytes.len() && n <= MAX_HEAD);
        }
        if let Ok(head) = parse_response_head(&bytes) {
            prop_assert!((100..600).contains(&head.status()));
            let _ = (answer(&head), ServiceOptions::from_head(&head), head.closes());
        }
    }

    #[test]
    fn folded_values_unfold_to_their_words(
        words in proptest::collection::vec("[A-Za-z0-9.=;-]{1,12}", 1..6),
        folds in proptest::collection::vec(prop_oneof![Just(" "), Just("\t"), Just("  \t")], 6),
    ) {
        let mut text = format!("ICAP/1.0 200 OK\r\nX-Name: {}", words[0]);
        for (word, fold) in words.iter().skip(1).zip(&folds) {
            text.push_str(&format!("\r\n{fold}{word}"));
        }
        text.push_str("\r\nNext: 1\r\n\r\n");
        let h = head(text.as_bytes());
        prop_assert_eq!(h.header("x-name"), Some(words.join(" ")));
        prop_assert_eq!(h.header("next"), Some("1".to_string()));
    }

    #[test]
    fn encapsulated_formats_back_to_itself(
        first in prop_oneof![Just("req-hdr"), Just("res-hdr")],
        body in prop_oneof![Just("req-body"), Just("res-body"), Just("null-body")],
        a in 0u64..1_000_000, b in 0u64..1_000_000,
    ) {
        let value = format!("{first}={}, {body}={}", a.min(b), a.max(b));
        let e = Encapsulated::parse(&value).unwrap();
        prop_assert_eq!(e.to_string(), value);
    }
}
