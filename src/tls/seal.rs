//! Sealing a client data connection's outgoing TLS records ourselves, once rustls has made the
//! handshake: the download's bytes are encrypted straight from the pump's buffer into the
//! buffer the socket is written from, one pass, no allocation per record.
//!
//! Why. rustls's writer copies each 16 KiB of plaintext into a fresh allocation, encrypts it
//! there and queues it; that copy and allocation were the largest part of a download's
//! user-space cost after AES-GCM itself (docs/ARCHITECTURE.md, "A transfer"). AES-GCM and
//! ChaCha20-Poly1305 can write their ciphertext anywhere, so the copy buys nothing.
//!
//! What stays rustls's. The handshake, resumption, tickets and every check of the data
//! connection; reading from the client (a download never reads its data connection, and an
//! upload keeps rustls). What is ours: the record framing of RFC 8446 §5.2 (TLS 1.3) and RFC
//! 5246 §6.2.3.3 with RFC 5288 §3 (TLS 1.2), the per-record nonce (the IV XOR the sequence
//! number, as rustls builds it, so the explicit nonce of TLS 1.2 AES-GCM is unique too),
//! close_notify, and the suite's confidentiality limit: at it, TLS 1.3 moves to the next
//! traffic secret with a KeyUpdate (RFC 8446 §4.6.3), as rustls would, and TLS 1.2, which has
//! none, refuses to seal more, as rustls does.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::aead::{CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::hkdf;
use rustls::{ConnectionTrafficSecrets, KeyLog, ProtocolVersion, SupportedCipherSuite};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The most plaintext one record carries (RFC 8446 §5.1).
pub const MAX_FRAGMENT: usize = 16 * 1024;

const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
/// The record type of application data, and of every TLS 1.3 record once encrypted.
pub(crate) const APPLICATION_DATA: u8 = 23;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 5;
/// TLS 1.2 AES-GCM's explicit nonce, sent ahead of each record's ciphertext.
const EXPLICIT_NONCE_LEN: usize = 8;
/// close_notify, at the warning level (RFC 8446 §6.1).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
/// KeyUpdate(update_not_requested) (RFC 8446 §4.6.3): the client keeps its own keys.
const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

/// Why a record was not sealed.
#[derive(Debug, PartialEq, Eq)]
pub enum SealError {
    /// The suite's limit was reached and it has no next key (TLS 1.2), or the sequence number
    /// would wrap: nothing more may be sealed with this key.
    Exhausted,
    /// `out` was shorter than [`Sealer::sealed_len`], or the AEAD refused: a bug here, never
    /// the peer's doing.
    Failed,
}

/// How records are framed, by protocol version.
enum Framing {
    /// TLS 1.3: the content type sealed after the content, the header as the AAD; the
    /// traffic secret (for the next key), and its hash.
    Tls13 {
        secret: Zeroizing<Vec<u8>>,
        hash: hkdf::Algorithm,
    },
    /// TLS 1.2: the sequence number, type, version and length as the AAD; `explicit` bytes of
    /// nonce ahead of the ciphertext (8 for AES-GCM, none for ChaCha20).
    Tls12 { explicit: usize },
}

/// One direction's record protection: key, IV, sequence number.
pub struct Sealer {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    /// Records one key may seal (the suite's confidentiality limit).
    limit: u64,
    framing: Framing,
}

impl Sealer {
    /// The sealer for what rustls extracted, `None` for a version or cipher it cannot seal.
    /// `tls13_secret` is the current server application traffic secret ([`TrafficSecret`]),
    /// needed under TLS 1.3 to make the next key at the limit.
    pub fn new(
        version: ProtocolVersion,
        suite: SupportedCipherSuite,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
        tls13_secret: Option<Zeroizing<Vec<u8>>>,
    ) -> Option<Sealer> {
        // TLS 1.2 sends an explicit nonce for AES-GCM (RFC 5288), none for ChaCha20 (RFC 7905).
        let (algorithm, key, iv, explicit) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&AES_128_GCM, key, iv, EXPLICIT_NONCE_LEN)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&AES_256_GCM, key, iv, EXPLICIT_NONCE_LEN)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&CHACHA20_POLY1305, key, iv, 0)
            }
            _ => return None,
        };
        let (framing, limit) = match (version, suite) {
            (ProtocolVersion::TLSv1_3, SupportedCipherSuite::Tls13(s)) => {
                let hash = match s.common.hash_provider.algorithm() {
                    rustls::crypto::hash::HashAlgorithm::SHA256 => hkdf::HKDF_SHA256,
                    rustls::crypto::hash::HashAlgorithm::SHA384 => hkdf::HKDF_SHA384,
                    _ => return None,
                };
                let secret = tls13_secret?;
                (
                    Framing::Tls13 { secret, hash },
                    s.common.confidentiality_limit,
                )
            }
            (ProtocolVersion::TLSv1_2, SupportedCipherSuite::Tls12(s)) => {
                (Framing::Tls12 { explicit }, s.common.confidentiality_limit)
            }
            _ => return None,
        };
        Some(Sealer {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).ok()?),
            iv: iv.as_ref().try_into().ok()?,
            seq,
            limit,
            framing,
        })
    }

    /// Bytes the records for `plain` bytes of content take at most, at [`MAX_FRAGMENT`] per
    /// record, with room for a KeyUpdate record: what [`Self::seal`]'s `out` must hold.
    pub fn sealed_len(plain: usize) -> usize {
        let per_record = HEADER_LEN + EXPLICIT_NONCE_LEN + 1 + TAG_LEN;
        let records = plain.div_ceil(MAX_FRAGMENT).max(1) + 1;
        plain + KEY_UPDATE.len() + records * per_record
    }

    /// Seals `plain` as application data records into the start of `out` (at least
    /// [`Self::sealed_len`] bytes); returns how many bytes they take.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SealError> {
        let mut at = 0;
        for fragment in plain.chunks(MAX_FRAGMENT) {
            let rest = out.get_mut(at..).ok_or(SealError::Failed)?;
            at += self.seal_record(APPLICATION_DATA, fragment, rest)?;
        }
        Ok(at)
    }

    /// Seals a close_notify alert into the start of `out` (at least
    /// `Self::sealed_len(0)` bytes); returns how many bytes it takes.
    pub fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, SealError> {
        self.seal_record(ALERT, &CLOSE_NOTIFY, out)
    }

    fn seal_record(&mut self, typ: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, SealError> {
        let mut at = 0;
        if self.seq >= self.limit {
            at = self.next_key(out)?;
        }
        let rest = out.get_mut(at..).ok_or(SealError::Failed)?;
        Ok(at + self.seal_one(typ, plain, rest)?)
    }

    /// TLS 1.3 at the limit: a KeyUpdate sealed with the old key into `out`, then the next
    /// key from the next traffic secret (RFC 8446 §7.2), its sequence numbers from zero.
    fn next_key(&mut self, out: &mut [u8]) -> Result<usize, SealError> {
        let Framing::Tls13 { secret, hash } = &self.framing else {
            return Err(SealError::Exhausted);
        };
        let hash = *hash;
        let secret = expand_label(hash, secret, b"traffic upd", secret.len())?;
        let algorithm = self.key.algorithm();
        let key = expand_label(hash, &secret, b"key", algorithm.key_len())?;
        let next = UnboundKey::new(algorithm, &key).map_err(|_| SealError::Failed)?;
        let iv = expand_label(hash, &secret, b"iv", NONCE_LEN)?;
        let iv: [u8; NONCE_LEN] = iv[..].try_into().map_err(|_| SealError::Failed)?;
        // Everything that can fail is done: the key and IV change together, or not at all.
        let written = self.seal_one(HANDSHAKE, &KEY_UPDATE, out)?;
        self.key = LessSafeKey::new(next);
        self.iv = iv;
        self.seq = 0;
        self.framing = Framing::Tls13 { secret, hash };
        Ok(written)
    }

    /// One record of `typ` carrying `plain` (at most [`MAX_FRAGMENT`]) into the start of
    /// `out`; returns its length.
    fn seal_one(&mut self, typ: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, SealError> {
        // TLS 1.3 hides the type inside (the outer one is always application data); TLS 1.2
        // AES-GCM sends its explicit nonce ahead of the ciphertext.
        let (outer, explicit, inner) = match self.framing {
            Framing::Tls13 { .. } => (APPLICATION_DATA, 0, &[typ][..]),
            Framing::Tls12 { explicit } => (typ, explicit, &[][..]),
        };
        let len = explicit + plain.len() + inner.len() + TAG_LEN;
        let record = out.get_mut(..HEADER_LEN + len).ok_or(SealError::Failed)?;
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(SealError::Exhausted)?;
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let head = record_header(outer, len);
        header.copy_from_slice(&head);
        let (prefix, rest) = body.split_at_mut(explicit);
        prefix.copy_from_slice(nonce.split_at(NONCE_LEN - explicit).1);
        let (text, tail) = rest.split_at_mut(plain.len());
        let aad = match self.framing {
            Framing::Tls13 { .. } => Aad::from(AdditionalData::Tls13(head)),
            Framing::Tls12 { .. } => {
                Aad::from(AdditionalData::Tls12(tls12_aad(seq, typ, plain.len())))
            }
        };
        self.key
            .seal_out_of_place_scatter(unique(nonce), aad, plain, text, inner, tail)
            .map(|()| HEADER_LEN + len)
            .map_err(|_| SealError::Failed)
    }
}

/// The additional data a record is sealed with: its header under TLS 1.3 (RFC 8446 §5.2), the
/// sequence number, type, version and plaintext length under TLS 1.2 (RFC 5246 §6.2.3.3).
enum AdditionalData {
    Tls13([u8; HEADER_LEN]),
    Tls12([u8; 13]),
}

impl AsRef<[u8]> for AdditionalData {
    fn as_ref(&self) -> &[u8] {
        match self {
            AdditionalData::Tls13(a) => a,
            AdditionalData::Tls12(a) => a,
        }
    }
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&[typ, 3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The nonce of one record: unique, since it is the IV XOR a sequence number that only
/// grows under one key.
fn unique(nonce: [u8; NONCE_LEN]) -> Nonce {
    Nonce::assume_unique_for_key(nonce)
}

/// A record header: type, legacy version 1.2 (RFC 8446 §5.1), length.
fn record_header(typ: u8, len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (len as u16).to_be_bytes();
    [typ, 3, 3, hi, lo]
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(
    hash: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    let length = (len as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let mut out = Zeroizing::new(vec![0; len]);
    prk.expand(&info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| SealError::Failed)?;
    Ok(out)
}

/// The key log of one client data connection: it keeps the server's application traffic
/// secret, which rustls's secret extraction leaves out and TLS 1.3's next key is made from.
#[derive(Debug, Default)]
pub struct TrafficSecret(Mutex<Option<Zeroizing<Vec<u8>>>>);

/// rustls's name for it (the NSS key log format's).
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl TrafficSecret {
    pub fn take(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.0.lock().ok()?.take()
    }
}

impl KeyLog for TrafficSecret {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == SERVER_TRAFFIC_SECRET {
            if let Ok(mut slot) = self.0.lock() {
                *slot = Some(Zeroizing::new(secret.to_vec()));
            }
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == SERVER_TRAFFIC_SECRET
    }
}

#[cfg(test)]
mod tests {
    //! The peer is rustls's own client: what it reads back is what the records carried, so a
    //! wrong nonce, AAD, framing or next key shows as a decryption error, not a quiet pass.

    use std::io::Read;
    use std::sync::Arc;

    use rustls::crypto::aws_lc_rs::cipher_suite as suites;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

    use super::*;

    /// A completed handshake in memory under `suite`, the server's key log beside it.
    fn connected(
        suite: SupportedCipherSuite,
        version: &'static SupportedProtocolVersion,
    ) -> (ServerConnection, ClientConnection, Arc<TrafficSecret>) {
        let id = crate::tls::self_signed(&["localhost".into()])
            .and_then(|s| s.identity())
            .expect("certificate");
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![suite];
        let provider = Arc::new(provider);
        let key_log = Arc::new(TrafficSecret::default());
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(id.chain.clone(), id.key)
            .expect("server config");
        server.enable_secret_extraction = true;
        server.key_log = Arc::clone(&key_log) as _;
        let mut roots = RootCertStore::empty();
        roots.add(id.chain[0].clone()).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = ServerConnection::new(Arc::new(server)).expect("server");
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(Arc::new(client), name).expect("client");
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).expect("client writes");
            server.read_tls(&mut &wire[..]).expect("server reads");
            server.process_new_packets().expect("server handshake");
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("server writes");
            }
            client.read_tls(&mut &wire[..]).expect("client reads");
            client.process_new_packets().expect("client handshake");
            if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
                return (server, client, key_log);
            }
        }
        panic!("handshake did not complete");
    }

    fn sealer(server: ServerConnection, key_log: &TrafficSecret) -> Sealer {
        let version = server.protocol_version().expect("version");
        let suite = server.negotiated_cipher_suite().expect("suite");
        let secrets = server.dangerous_extract_secrets().expect("secrets");
        Sealer::new(version, suite, secrets.tx, key_log.take()).expect("sealable")
    }

    /// Feeds `wire` to the client and returns the plaintext it reads, and whether it saw
    /// close_notify.
    fn receive(client: &mut ClientConnection, mut wire: &[u8]) -> (Vec<u8>, bool) {
        let mut plain = Vec::new();
        let mut closed = false;
        while !wire.is_empty() {
            client.read_tls(&mut wire).expect("client reads");
            let state = client.process_new_packets().expect("records open");
            closed |= state.peer_has_closed();
            let mut chunk = vec![0; state.plaintext_bytes_to_read()];
            client.reader().read_exact(&mut chunk).expect("plaintext");
            plain.extend_from_slice(&chunk);
        }
        (plain, closed)
    }

    /// How many records `wire` holds.
    fn records(mut wire: &[u8]) -> usize {
        let mut n = 0;
        while let Some(header) = wire.get(..HEADER_LEN) {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            wire = &wire[HEADER_LEN + len..];
            n += 1;
        }
        n
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Seals `plain` in one call, as a download's write does.
    fn sealed(sealer: &mut Sealer, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0; Sealer::sealed_len(plain.len())];
        let n = sealer.seal(plain, &mut out).expect("sealed");
        out.truncate(n);
        out
    }

    #[test]
    fn every_suite_s_records_open_at_a_rustls_client_and_close_cleanly() {
        let cases = [
            (suites::TLS13_AES_128_GCM_SHA256, &rustls::version::TLS13),
            (suites::TLS13_AES_256_GCM_SHA384, &rustls::version::TLS13),
            (
                suites::TLS13_CHACHA20_POLY1305_SHA256,
                &rustls::version::TLS13,
            ),
            (
                suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                &rustls::version::TLS12,
            ),
            (
                suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                &rustls::version::TLS12,
            ),
            (
                suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                &rustls::version::TLS12,
            ),
        ];
        for (suite, version) in cases {
            let (server, mut client, key_log) = connected(suite, version);
            let mut sealer = sealer(server, &key_log);
            // Several full records, a partial one, then a one-byte write.
            let first = payload(3 * MAX_FRAGMENT + 1000);
            let wire = sealed(&mut sealer, &first);
            assert!(wire.len() <= Sealer::sealed_len(first.len()));
            let (plain, closed) = receive(&mut client, &wire);
            assert_eq!(plain, first, "{:?}", suite.suite());
            assert!(!closed);
            let (plain, _) = receive(&mut client, &sealed(&mut sealer, b"x"));
            assert_eq!(plain, b"x", "{:?}", suite.suite());
            let mut out = vec![0; Sealer::sealed_len(0)];
            let n = sealer.close_notify(&mut out).expect("close_notify");
            let (plain, closed) = receive(&mut client, &out[..n]);
            assert!(plain.is_empty() && closed, "{:?}", suite.suite());
        }
    }

    #[test]
    fn tls13_moves_to_the_next_key_at_the_limit_and_the_client_follows() {
        for suite in [
            suites::TLS13_AES_128_GCM_SHA256,
            suites::TLS13_AES_256_GCM_SHA384,
        ] {
            let (server, mut client, key_log) = connected(suite, &rustls::version::TLS13);
            let mut sealer = sealer(server, &key_log);
            sealer.limit = sealer.seq + 2;
            // Five records: the third is sealed under the next key, a KeyUpdate before it.
            let sent = payload(5 * MAX_FRAGMENT);
            let wire = sealed(&mut sealer, &sent);
            let (plain, _) = receive(&mut client, &wire);
            assert_eq!(plain, sent, "{:?}", suite.suite());
            assert_eq!(records(&wire), 6, "five records and a KeyUpdate");
            assert_eq!(sealer.seq, 3, "three records under the next key");
        }
    }

    #[test]
    fn tls12_refuses_to_seal_past_the_limit() {
        let (server, mut client, key_log) = connected(
            suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            &rustls::version::TLS12,
        );
        let mut sealer = sealer(server, &key_log);
        sealer.limit = sealer.seq + 1;
        let (plain, _) = receive(&mut client, &sealed(&mut sealer, b"last"));
        assert_eq!(plain, b"last");
        let mut out = vec![0; Sealer::sealed_len(4)];
        assert_eq!(sealer.seal(b"more", &mut out), Err(SealError::Exhausted));
    }
}
