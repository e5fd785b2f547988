//! One ACME order, start to finish, through instant-acme: the account (created once and kept in
//! `state_dir`), then order, challenges, finalize and download. The protocol (JWS, nonces and
//! their `badNonce` retries, polling) is the crate's; this file only chooses what to answer.

use std::time::Duration;

use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tracing::info;

use super::responder::Responses;
use super::{state, AcmeError};
use crate::config::{AcmeCert, AcmeSettings, Challenge};

/// The HTTPS client toward the directory: the system's roots plus `directory_ca`, and a
/// bounded connect (the whole order is bounded by `timeout_secs` on top).
pub(crate) fn http_client(settings: &AcmeSettings) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(ca) = &settings.directory_ca {
        let bad = |why: String| AcmeError::State {
            path: ca.clone(),
            why,
        };
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, BodyWrapper<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// The account in `state_dir`, or a new one, saved there before it is used.
pub(crate) async fn account(
    settings: &AcmeSettings,
    http: Box<dyn HttpClient>,
) -> Result<Account, AcmeError> {
    let file = settings.account_file();
    match std::fs::read(&file) {
        Ok(json) => Ok(Account::builder_with_http(http)
            .from_credentials(serde_json::from_slice(&json)?)
            .await?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let contact = settings.contact_url();
            let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (account, credentials) = Account::builder_with_http(http)
                .create(&new, settings.directory.clone(), None)
                .await?;
            state::write_private(&file, &serde_json::to_vec(&credentials)?)?;
            info!(directory = %settings.directory, id = account.id(), "ACME account created");
            Ok(account)
        }
        Err(e) => Err(AcmeError::state(&file, e)),
    }
}

/// A certificate chain and its key, in PEM, as the CA issued them.
pub(crate) struct Issued {
    pub chain: String,
    pub key: String,
}

/// Orders `cert`, answers its challenges through `responses`, and downloads the result. Polls
/// give up after `limit` (the caller bounds the whole order too).
pub(crate) async fn order(
    account: &Account,
    cert: &AcmeCert,
    challenge: Challenge,
    responses: &Responses,
    limit: Duration,
) -> Result<Issued, AcmeError> {
    let ids: Vec<Identifier> = cert.names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut posted = Posted {
        responses,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Refused {
                    name,
                    why: format!("authorization is {other:?}"),
                })
            }
        }
        let (kind, label) = match challenge {
            Challenge::Http01 => (ChallengeType::Http01, "http-01"),
            Challenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        };
        let mut handle = authz.challenge(kind).ok_or_else(|| AcmeError::Refused {
            name: name.clone(),
            why: format!("the CA offers no {label} challenge"),
        })?;
        let key_authorization = handle.key_authorization();
        match challenge {
            Challenge::Http01 => {
                responses.put_http(&handle.token, key_authorization.as_str());
                posted.tokens.push(handle.token.clone());
            }
            Challenge::TlsAlpn01 => {
                responses.put_alpn(&name, key_authorization.digest().as_ref())?;
                posted.names.push(name);
            }
        }
        handle.set_ready().await?;
    }
    let polls = RetryPolicy::new().timeout(limit);
    if order.poll_ready(&polls).await? != OrderStatus::Ready {
        return Err(why_invalid(&mut order).await);
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&polls).await?;
    Ok(Issued { chain, key })
}

/// The CA's own words for an order that went invalid: the first failed challenge's problem.
async fn why_invalid(order: &mut Order) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return AcmeError::Refused {
                name,
                why: problem.to_string(),
            };
        }
    }
    AcmeError::Refused {
        name: "order".into(),
        why: "the order went invalid and the CA said not why".into(),
    }
}

/// What an order put up for the CA, taken down when it ends, however it ends (a timeout drops
/// the order's future half-way).
struct Posted<'a> {
    responses: &'a Responses,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        self.responses.clear(&self.tokens, &self.names);
    }
}
