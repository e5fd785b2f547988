//! The arguments the gateway interprets itself, as types: what a client may send is parsed
//! here, in the pure layer that is property-tested and fuzzed, so a session only ever matches
//! on values it understands. (PORT and EPRT addresses are in [`super::addr`].)

/// `AUTH` (RFC 2228, RFC 4217 §6): TLS is the only mechanism; `SSL` and `TLS-P` are the
/// pre-RFC 4217 names that also imply `PROT P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Tls,
    TlsWithPrivateData,
}

impl AuthMechanism {
    /// `None`: a mechanism the gateway does not offer (504).
    pub fn parse(arg: &str) -> Option<AuthMechanism> {
        match arg.trim().to_ascii_uppercase().as_str() {
            "TLS" | "TLS-C" => Some(AuthMechanism::Tls),
            "SSL" | "TLS-P" => Some(AuthMechanism::TlsWithPrivateData),
            _ => None,
        }
    }
}

/// `PROT` (RFC 2228 §3, RFC 4217 §9): the data channel's protection level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtLevel {
    Clear,
    /// Integrity only: TLS has no such mode (536).
    Safe,
    /// Confidentiality only: likewise (536).
    Confidential,
    Private,
}

impl ProtLevel {
    /// `None`: not a level at all (504).
    pub fn parse(arg: &str) -> Option<ProtLevel> {
        match arg.trim().to_ascii_uppercase().as_str() {
            "C" => Some(ProtLevel::Clear),
            "S" => Some(ProtLevel::Safe),
            "E" => Some(ProtLevel::Confidential),
            "P" => Some(ProtLevel::Private),
            _ => None,
        }
    }
}

/// `PBSZ` (RFC 2228 §3, RFC 4217 §8): a decimal buffer size; with TLS the answer is always 0.
pub fn parse_pbsz(arg: &str) -> Option<u32> {
    arg.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_case_insensitively_and_refuse_the_rest() {
        assert_eq!(AuthMechanism::parse("tls"), Some(AuthMechanism::Tls));
        assert_eq!(AuthMechanism::parse("TLS-C"), Some(AuthMechanism::Tls));
        assert_eq!(
            AuthMechanism::parse("ssl"),
            Some(AuthMechanism::TlsWithPrivateData)
        );
        assert_eq!(AuthMechanism::parse("GSSAPI"), None);
        assert_eq!(ProtLevel::parse(" p "), Some(ProtLevel::Private));
        assert_eq!(ProtLevel::parse("e"), Some(ProtLevel::Confidential));
        assert_eq!(ProtLevel::parse("X"), None);
        assert_eq!(ProtLevel::parse(""), None);
        assert_eq!(parse_pbsz("0"), Some(0));
        assert_eq!(parse_pbsz("-1"), None);
        assert_eq!(parse_pbsz("99999999999"), None);
    }
}
