//! The challenge responders: what the CA connects to while it validates an order.
//!
//! - http-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/TOKEN` answers the key
//!   authorization; anything else is 404.
//! - tls-alpn-01 (RFC 8737): a TLS handshake with ALPN `acme-tls/1` and the name being checked
//!   as SNI gets a self-signed certificate for that name carrying the `acmeIdentifier`
//!   extension (the SHA-256 of the key authorization); nothing else is served.
//!
//! Both are bounded as every listener of the gateway is: a connection lives at most
//! [`CONNECTION_LIMIT`], at most [`MAX_CONNECTIONS`] are open at once, and at most
//! [`PER_ADDRESS`] from one address, so one host holding connections open cannot keep the
//! CA's validation out.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::AcmeError;
use crate::metrics::Metrics;

/// How long one challenge connection may take, headers, handshake and all.
const CONNECTION_LIMIT: Duration = Duration::from_secs(10);
/// Challenge connections open at once; more are closed at accept. A CA validates from a few
/// vantage points per name, so this is room to spare, not a limit a CA meets.
const MAX_CONNECTIONS: usize = 64;
/// Challenge connections open at once from one address: a CA's vantage point opens one or two.
const PER_ADDRESS: usize = 8;
const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The answers pending orders have put up, shared by the orders and the responders.
#[derive(Debug, Default)]
pub(crate) struct Responses {
    /// http-01: token to key authorization.
    http: DashMap<String, String>,
    /// tls-alpn-01: lower-case name to its challenge certificate.
    alpn: DashMap<String, Arc<CertifiedKey>>,
}

impl Responses {
    pub(crate) fn put_http(&self, token: &str, key_authorization: &str) {
        self.http
            .insert(token.to_string(), key_authorization.to_string());
    }

    /// Builds and puts up the tls-alpn-01 certificate for `name`.
    pub(crate) fn put_alpn(&self, name: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // `CertifiedKey::new`, not `from_der`: that one checks the key against the certificate
        // through webpki, which refuses the critical acmeIdentifier extension this
        // certificate exists to carry.
        let signer = crate::tls::provider().key_provider.load_private_key(der)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signer);
        self.alpn
            .insert(name.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    /// Takes down what an order put up, whatever its outcome.
    pub(crate) fn clear(&self, tokens: &[String], names: &[String]) {
        for t in tokens {
            self.http.remove(t);
        }
        for n in names {
            self.alpn.remove(&n.to_ascii_lowercase());
        }
    }

    fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP_PREFIX)?;
        self.http.get(token).map(|k| k.value().clone())
    }
}

impl ResolvesServerCert for Responses {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Only the validation handshake gets a challenge certificate (RFC 8737 §3).
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        let name = hello.server_name()?.to_ascii_lowercase();
        acme.then(|| self.alpn.get(&name).map(|c| Arc::clone(c.value())))
            .flatten()
    }
}

/// Accepts on `listener` until the task is aborted, each connection served by `handle` in a
/// task of its own, at most [`MAX_CONNECTIONS`] at once (more are closed at accept).
async fn serve<F, Fut>(listener: TcpListener, metrics: Arc<Metrics>, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<DashMap<std::net::IpAddr, usize>> = Arc::default();
    let mut acceptor = crate::accept::Acceptor::new(None);
    loop {
        let (tcp, peer) = acceptor.accept(&listener, &metrics).await;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let Some(share) = Share::take(&per_address, peer.ip()) else {
            continue;
        };
        let work = handle(tcp, peer);
        tokio::spawn(async move {
            let (_slot, _share) = (slot, share);
            work.await
        });
    }
}

/// One connection's place in its address's count, given back when dropped.
struct Share {
    counts: Arc<DashMap<std::net::IpAddr, usize>>,
    ip: std::net::IpAddr,
}

impl Share {
    fn take(counts: &Arc<DashMap<std::net::IpAddr, usize>>, ip: std::net::IpAddr) -> Option<Share> {
        let mut n = counts.entry(ip).or_insert(0);
        if *n >= PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Share {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.counts.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// Serves http-01 answers on `listener` until the task is aborted.
pub(crate) async fn serve_http(
    listener: TcpListener,
    responses: Arc<Responses>,
    metrics: Arc<Metrics>,
) {
    serve(listener, metrics, move |tcp, peer| {
        let responses = Arc::clone(&responses);
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = responses.http_answer(req.uri().path());
                async move {
                    Ok::<_, Infallible>(match answer {
                        Some(key_authorization) => {
                            debug!(%peer, path = %req.uri().path(), "http-01 challenge answered");
                            reply(StatusCode::OK, key_authorization)
                        }
                        None => reply(StatusCode::NOT_FOUND, "no such challenge\n".into()),
                    })
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CONNECTION_LIMIT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
        }
    })
    .await
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// The tls-alpn-01 responder's TLS: challenge certificates only, ALPN `acme-tls/1` only.
pub(crate) fn alpn_acceptor(responses: Arc<Responses>) -> Result<TlsAcceptor, AcmeError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(responses);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves tls-alpn-01 handshakes on `listener` until the task is aborted.
pub(crate) async fn serve_alpn(listener: TcpListener, tls: TlsAcceptor, metrics: Arc<Metrics>) {
    serve(listener, metrics, move |tcp, peer| {
        let tls = tls.clone();
        async move {
            // The handshake is the whole answer: once it is over the CA closes.
            match tokio::time::timeout(CONNECTION_LIMIT, tls.accept(tcp)).await {
                Ok(Ok(_)) => debug!(%peer, "tls-alpn-01 challenge answered"),
                Ok(Err(e)) => debug!(%peer, error = %e, "tls-alpn-01 handshake failed"),
                Err(_) => debug!(%peer, "tls-alpn-01 handshake timed out"),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: ftp.example.com\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.expect("read");
        reply
    }

    #[tokio::test]
    async fn http01_answers_its_tokens_only_and_a_silent_peer_is_dropped_at_the_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let responses = Arc::new(Responses::default());
        responses.put_http("tok", "tok.thumb");
        let server = tokio::spawn(serve_http(listener, Arc::clone(&responses), Metrics::new()));
        let ok = get(addr, "/.well-known/acme-challenge/tok").await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("tok.thumb"),
            "{ok}"
        );
        let other = get(addr, "/.well-known/acme-challenge/other").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        responses.clear(&["tok".into()], &[]);
        let gone = get(addr, "/.well-known/acme-challenge/tok").await;
        assert!(
            gone.starts_with("HTTP/1.1 404"),
            "taken down after the order: {gone}"
        );

        // Peers that connect and say nothing hold their slots no longer than the limit, and
        // one address holds no more than its share: the CA, elsewhere, still gets in.
        let started = std::time::Instant::now();
        let mut silent = Vec::new();
        for _ in 0..PER_ADDRESS {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut over = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let shut = tokio::time::timeout(CONNECTION_LIMIT / 2, over.read(&mut buf)).await;
        assert!(
            matches!(shut, Ok(Ok(0)) | Ok(Err(_))),
            "beyond the share: {shut:?}"
        );
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind");
        let mut ca = other.connect(addr).await.expect("connect");
        ca.write_all(b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        ca.read_to_string(&mut reply).await.expect("read");
        assert!(
            reply.starts_with("HTTP/1.1 404"),
            "another address is served: {reply}"
        );
        for mut s in silent {
            let read = tokio::time::timeout(CONNECTION_LIMIT * 2, s.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "closed, not left open: {read:?}"
            );
        }
        assert!(started.elapsed() >= CONNECTION_LIMIT / 2);
        server.abort();
    }
}
