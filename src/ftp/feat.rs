//! FEAT (RFC 2389) rewriting: the client must learn what the gateway can carry, which is the
//! backend's features minus the ones the gateway answers or refuses itself, plus the TLS
//! features the gateway provides in front of a backend that may have none.

use super::Reply;

/// Features the gateway owns. The backend's entries for these (if any) describe the backend's
/// own TLS or data-connection set-up, which the client never sees.
const OWNED: &[&str] = &[
    "AUTH", "PBSZ", "PROT", "CCC", "ADAT", "EPSV", "EPRT", "LPRT", "LPSV", "SSCN", "CPSV",
];

/// Always offered, whatever the backend says.
const ADDED: &[&str] = &["AUTH TLS", "PBSZ", "PROT", "EPSV"];

/// Builds the client's 211 FEAT reply from the backend's reply to FEAT. A backend that does not
/// implement FEAT (500/502) still gets the gateway's own features listed.
pub fn rewrite_feat(backend: &Reply) -> Reply {
    let mut features: Vec<String> = gateway_feat().body_lines();
    if backend.code() == 211 {
        for line in backend.body_lines() {
            let name = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            if name.is_empty() || OWNED.contains(&name.as_str()) {
                continue;
            }
            features.push(format!(" {}", line.trim_start()));
        }
    }
    Reply::multi(211, "Features:", &features, "End")
}

/// The gateway's own FEAT reply, for a client that asks before the backend is connected
/// (before TLS): only what the gateway provides itself.
pub fn gateway_feat() -> Reply {
    let features: Vec<String> = ADDED.iter().map(|f| format!(" {f}")).collect();
    Reply::multi(211, "Features:", &features, "End")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::ReplyAssembler;

    fn reply(lines: &[&str]) -> Reply {
        let mut a = ReplyAssembler::new(4096);
        let mut out = None;
        for l in lines {
            out = a.push(l.as_bytes()).expect("valid");
        }
        out.expect("complete")
    }

    #[test]
    fn backend_features_kept_and_tls_features_added() {
        let r = rewrite_feat(&reply(&[
            "211-Features:",
            " MDTM",
            " REST STREAM",
            " UTF8",
            "211 End",
        ]));
        let body = r.body_lines();
        for f in [
            " AUTH TLS",
            " PBSZ",
            " PROT",
            " EPSV",
            " MDTM",
            " REST STREAM",
            " UTF8",
        ] {
            assert!(body.iter().any(|l| l == f), "missing {f} in {body:?}");
        }
    }

    #[test]
    fn backend_tls_and_active_features_dropped() {
        let r = rewrite_feat(&reply(&[
            "211-Features:",
            " AUTH SSL",
            " EPRT",
            " CCC",
            " SIZE",
            "211 End",
        ]));
        let body = r.body_lines();
        assert!(!body
            .iter()
            .any(|l| l.contains("SSL") || l.contains("EPRT") || l.contains("CCC")));
        assert_eq!(body.iter().filter(|l| l.as_str() == " EPSV").count(), 1);
        assert!(body.iter().any(|l| l == " SIZE"));
    }

    #[test]
    fn backend_without_feat_still_gets_gateway_features() {
        let r = rewrite_feat(&Reply::new(500, "Unknown command"));
        assert_eq!(r.code(), 211);
        assert_eq!(r.body_lines().len(), ADDED.len());
        assert!(!r.body_lines().iter().any(|l| l.contains("UTF8")));
    }
}
