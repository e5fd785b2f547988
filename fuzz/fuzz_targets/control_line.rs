//! Client control-channel bytes: line framing (CRLF, NUL, bare CR/LF, Telnet IAC, length cap)
//! and command parsing. The first byte picks where the input is split, as a socket would.
#![no_main]

use ftpsgate::ftp::{parse_pbsz, AuthMechanism, LineFramer, Peer, ProtLevel, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut framer = LineFramer::new(512, Peer::Client);
    let step = usize::from(split).max(1);
    for chunk in rest.chunks(step) {
        framer.extend(chunk);
        while let Some(line) = framer.next_line() {
            let Ok(line) = line else { continue };
            assert!(line.len() <= 512);
            assert!(!line.contains(&b'\n') && !line.contains(&0));
            if let Ok(req) = Request::parse(line) {
                let cmd = req.line;
                let wire = cmd.to_wire();
                assert!(wire.ends_with(b"\r\n"));
                assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
                let arg = cmd.arg_text();
                let _ = (req.command.allowed_before_tls(), cmd.name(), cmd.to_string());
                let _ = (
                    AuthMechanism::parse(&arg),
                    ProtLevel::parse(&arg),
                    parse_pbsz(&arg),
                );
            }
        }
    }
});
