//! Reading certificates: the names a certificate answers to (SNI, `doctor`, `probe`) and the
//! user a client certificate names (login binding, the logs).

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::CertUser;

/// The DNS names in a certificate's subjectAltName, as written (SNI selects by them).
pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => san_names(&cert, false),
        Err(_) => Vec::new(),
    }
}

/// The names a certificate answers to, lower-cased: the DNS names and IP addresses of its
/// subjectAltName (what `doctor` and `probe` compare with the name clients use).
pub fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    san_names(cert, true)
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

fn san_names(cert: &X509Certificate<'_>, with_ips: bool) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) if with_ips => ip_from_bytes(b).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The user a client certificate names: its subject's common name, or the local part of its
/// first rfc822Name (email) in the subjectAltName whose domain is one of `email_domains`.
/// The domain matters: a CA may certify addresses in domains whose users are not ours, and
/// `alice@elsewhere.example` is not `alice`.
pub fn certificate_user(
    der: &CertificateDer<'_>,
    field: CertUser,
    email_domains: &[String],
) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match field {
        CertUser::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertUser::Email => {
            let san = cert.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::RFC822Name(mail) => mail
                    .rsplit_once('@')
                    .filter(|(_, domain)| {
                        email_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
                    })
                    .map(|(local, _)| local.to_string()),
                _ => None,
            })
        }
    }
}

/// A certificate's subject, e.g. `CN=alice, O=Example`, for the logs.
pub fn subject(der: &CertificateDer<'_>) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_names_a_user_only_in_a_listed_domain() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for mail in ["alice@evil.example", "bob@Example.ORG"] {
            params
                .subject_alt_names
                .push(rcgen::SanType::Rfc822Name(mail.try_into().expect("email")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der();
        let user = |domains: &[&str]| {
            let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
            certificate_user(der, CertUser::Email, &domains)
        };
        assert_eq!(user(&["example.org"]).as_deref(), Some("bob"));
        assert_eq!(
            user(&["EVIL.example", "example.org"]).as_deref(),
            Some("alice")
        );
        assert_eq!(user(&["sub.example.org", "example"]), None);
        assert_eq!(user(&[]), None);
    }
}
