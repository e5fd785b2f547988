//! Properties of the pure protocol layer, checked on generated inputs: every encoding the
//! gateway writes parses back to what it encoded, however the bytes are split on the wire, and
//! no input at all makes a parser panic. (The same parsers are fuzzed under `fuzz/`.)

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ftpsgate::ftp::addr::{self, EpsvArg};
use ftpsgate::ftp::{rewrite_feat, LineFramer, Peer, Reply, ReplyAssembler, Request};
use proptest::prelude::*;

/// Feeds `wire` to a framer and an assembler in chunks cut at `cuts`, as a socket might
/// deliver it, and returns every reply that comes out.
fn assemble(wire: &[u8], cuts: &[usize]) -> Vec<Reply> {
    let mut framer = LineFramer::new(1 << 20, Peer::Backend);
    let mut assembler = ReplyAssembler::new(1 << 20);
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut start = 0;
    for end in points {
        framer.extend(&wire[start..end]);
        start = end;
        while let Some(line) = framer.next_line() {
            let line = line.expect("backend lines are lenient");
            if let Some(reply) = assembler.push(&line).expect("well-formed reply") {
                out.push(reply);
            }
        }
    }
    out
}

/// Reply text as servers write it: printable, no line breaks.
fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,80}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pasv_reply_round_trips(ip: [u8; 4], port in 1u16..) {
        let a = SocketAddrV4::new(Ipv4Addr::from(ip), port);
        prop_assert_eq!(addr::parse_pasv(&addr::format_pasv(a)), Ok(a));
    }

    #[test]
    fn epsv_reply_round_trips(port in 1u16..) {
        prop_assert_eq!(addr::parse_epsv(&addr::format_epsv(port)), Ok(port));
    }

    #[test]
    fn port_and_eprt_round_trip(v4: [u8; 4], v6: [u8; 16], port in 1u16..) {
        let a = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v4), port));
        let wire = addr::format_active(a);
        let arg = wire.strip_prefix("PORT ").expect("PORT for IPv4");
        prop_assert_eq!(addr::parse_port(arg), Ok(a));
        let b = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(v6), port, 0, 0));
        let wire = addr::format_active(b);
        let arg = wire.strip_prefix("EPRT ").expect("EPRT for IPv6");
        prop_assert_eq!(addr::parse_eprt(arg), Ok(b));
    }

    #[test]
    fn single_line_reply_round_trips_however_split(
        code in 100u16..600,
        t in text(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let reply = Reply::new(code, &t);
        let got = assemble(reply.as_bytes(), &cuts);
        prop_assert_eq!(got, vec![reply]);
    }

    #[test]
    fn multi_line_reply_round_trips_however_split(
        code in 100u16..600,
        first in text(),
        body in prop::collection::vec(text(), 0..6),
        last in text(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        // A body line that is the code alone, or starts with it and a space, would end the
        // reply early; RFC 959 has servers indent such lines, and so do we.
        let closing = |l: &str| l == code.to_string() || l.starts_with(&format!("{code} "));
        let body: Vec<String> = body
            .into_iter()
            .map(|l| if closing(&l) { format!(" {l}") } else { l })
            .collect();
        let reply = Reply::multi(code, &first, &body, &last);
        let got = assemble(reply.as_bytes(), &cuts);
        prop_assert_eq!(got, vec![reply]);
    }

    #[test]
    fn client_lines_come_out_whole_however_split(
        lines in prop::collection::vec("[ -~]{1,100}", 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let wire: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
        let mut framer = LineFramer::new(4096, Peer::Client);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut got = Vec::new();
        let mut start = 0;
        for end in points {
            framer.extend(&wire[start..end]);
            start = end;
            while let Some(line) = framer.next_line() {
                got.push(String::from_utf8(line.expect("valid line")).expect("utf-8"));
            }
        }
        prop_assert_eq!(got, lines);
    }

    #[test]
    fn a_password_never_reaches_a_log(pw in "[A-Za-z0-9]{5,40}") {
        let cmd = Request::parse(format!("PASS {pw}").into_bytes()).expect("PASS parses").line;
        let (shown, debugged) = (cmd.to_string(), format!("{cmd:?}"));
        prop_assert!(!shown.contains(&pw), "Display leaks: {}", shown);
        prop_assert!(!debugged.contains(&pw), "Debug leaks: {}", debugged);
    }

    #[test]
    fn no_client_bytes_panic_the_framer_or_the_command_parser(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
    ) {
        let mut framer = LineFramer::new(512, Peer::Client);
        for chunk in &chunks {
            framer.extend(chunk);
            while let Some(line) = framer.next_line() {
                if let Ok(line) = line {
                    prop_assert!(line.len() <= 512);
                    if let Ok(req) = Request::parse(line) {
                        let cmd = req.line;
                        let _ = (req.command.transfer(), cmd.name(), cmd.arg_text(), cmd.to_wire(), format!("{cmd}"));
                    }
                }
            }
        }
    }

    #[test]
    fn no_backend_bytes_panic_the_reply_path(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
    ) {
        let mut framer = LineFramer::new(1024, Peer::Backend);
        let mut assembler = ReplyAssembler::new(4096);
        for chunk in &chunks {
            framer.extend(chunk);
            while let Some(Ok(line)) = framer.next_line() {
                if let Ok(Some(reply)) = assembler.push(&line) {
                    let _ = (reply.text(), reply.body_lines(), rewrite_feat(&reply));
                    let _ = addr::parse_pasv(&reply.text());
                    let _ = addr::parse_epsv(&reply.text());
                }
            }
        }
    }

    #[test]
    fn no_string_panics_the_address_parsers(s in any::<String>()) {
        let _ = addr::parse_pasv(&s);
        let _ = addr::parse_epsv(&s);
        let _ = addr::parse_port(&s);
        let _ = addr::parse_eprt(&s);
        let _ = EpsvArg::parse(&s);
    }

    #[test]
    fn no_document_panics_the_config_parser(s in any::<String>()) {
        let _ = toml::from_str::<ftpsgate::config::Settings>(&s);
    }
}

/// Near-misses that generated strings rarely hit.
#[test]
fn address_parsers_refuse_near_misses() {
    for bad in [
        "1,2,3,4,0,0",
        "256,1,1,1,1,1",
        "1,2,3,4,5",
        "1,2,3,4,5,6,7",
        ",,,,,",
        "1,2,3,4,5,6 ",
    ] {
        let _ = addr::parse_port(bad);
    }
    assert!(addr::parse_port("1,2,3,4,0,0").is_err(), "port 0");
    assert!(addr::parse_port("1,2,3,4,5,6,7").is_err(), "seven numbers");
    assert!(addr::parse_epsv("(|||0|)").is_err(), "port 0");
    assert!(
        addr::parse_epsv("(|||70000|)").is_err(),
        "port out of range"
    );
    assert!(addr::parse_epsv("(1112221)").is_err(), "digit delimiter");
    assert!(
        addr::parse_eprt("|1|::1|21|").is_err(),
        "IPv6 address as protocol 1"
    );
    assert!(
        addr::parse_eprt("|2|127.0.0.1|21|").is_err(),
        "IPv4 address as protocol 2"
    );
    assert!(addr::parse_pasv("227 (10,0,0,1,0,0)").is_err(), "port 0");
}
