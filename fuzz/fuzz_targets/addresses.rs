//! PASV/EPSV replies and PORT/EPRT/EPSV arguments: whatever parses must format back to
//! something that parses to the same address.
#![no_main]

use std::net::SocketAddr;

use ftpsgate::ftp::addr::{self, EpsvArg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(a) = addr::parse_pasv(&s) {
        assert_eq!(addr::parse_pasv(&addr::format_pasv(a)), Ok(a));
    }
    if let Ok(p) = addr::parse_epsv(&s) {
        assert_eq!(addr::parse_epsv(&addr::format_epsv(p)), Ok(p));
    }
    for parsed in [addr::parse_port(&s), addr::parse_eprt(&s)] {
        if let Ok(a) = parsed {
            let wire = addr::format_active(a);
            let back = match a {
                SocketAddr::V4(_) => addr::parse_port(&wire["PORT ".len()..]),
                SocketAddr::V6(_) => addr::parse_eprt(&wire["EPRT ".len()..]),
            };
            assert_eq!(back, Ok(a));
        }
    }
    let _ = EpsvArg::parse(&s);
});
