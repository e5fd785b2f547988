//! Backend control-channel bytes: lenient framing, multi-line reply assembly with its size
//! cap, FEAT rewriting and the passive-reply parsers.
#![no_main]

use ftpsgate::ftp::{addr, rewrite_feat, LineFramer, Peer, ReplyAssembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut framer = LineFramer::new(1024, Peer::Backend);
    let mut assembler = ReplyAssembler::new(8192);
    for chunk in rest.chunks(usize::from(split).max(1)) {
        framer.extend(chunk);
        while let Some(line) = framer.next_line() {
            let Ok(line) = line else { continue };
            let Ok(Some(reply)) = assembler.push(&line) else {
                continue;
            };
            assert!(reply.as_bytes().len() <= 8192);
            assert!((100..600).contains(&reply.code()));
            let feat = rewrite_feat(&reply);
            assert!(feat.as_bytes().ends_with(b"\r\n"));
            let text = reply.text();
            let _ = (
                addr::parse_pasv(&text),
                addr::parse_epsv(&text),
                reply.body_lines(),
            );
        }
    }
});
