//! Backends scripted in Rust over TCP: hostile ones, and ones that answer in set ways.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread;

use tempfile::TempDir;

/// A scripted FTP server for what real servers will not do on demand. It has no EPSV (500), and
/// its 227 names a foreign address (10.9.9.9) while it listens on loopback, so a gateway that
/// trusted the reply would fail. It serves `RETR` of one blob, `STOR`, `LIST` and `STAT`.
///
/// The user name chooses how it misbehaves from `PASS` on, so one server (and one gateway in
/// front of it) carries well-behaved and hostile sessions side by side: see [`Hostile`].
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    pub blob: Vec<u8>,
    pub stored: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// The misbehaviours of [`ScriptedBackend`], by user name.
pub struct Hostile;

impl Hostile {
    /// Writes every reply one byte at a time.
    pub const BYTEWISE: &'static str = "bytewise";
    /// Answers `PASS` with a 1 MiB reply line.
    pub const HUGE_LINE: &'static str = "hugeline";
    /// Never answers `PASS`.
    pub const SILENT: &'static str = "silent";
    /// Resets the data connection in the middle of a `RETR`, then says 426.
    pub const RESET: &'static str = "reset";
    /// Closes the control connection in the middle of its reply to `PASS`.
    pub const HANGUP: &'static str = "hangup";
}

/// The `STAT` reply and `LIST` lines: a "227" inside a multi-line reply and in a listing, which
/// must be relayed as text, never read as a passive-mode answer.
pub const STAT_WITH_227: &str =
    "211-Status\r\n227 Entering Passive Mode (6,6,6,6,1,1)\r\n 227 indented\r\n211 End\r\n";
pub const LISTING_WITH_227: &str =
    "-rw-r--r-- 1 ftp ftp 3 Jan 1 00:00 a.txt\r\n227 Entering Passive Mode (6,6,6,6,1,1)\r\n";

impl ScriptedBackend {
    pub fn start(blob: Vec<u8>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (served, store) = (blob.clone(), stored.clone());
        thread::spawn(move || {
            for control in listener.incoming().take(64) {
                let Ok(control) = control else { continue };
                let (served, store) = (served.clone(), store.clone());
                thread::spawn(move || scripted_session(control, &served, &store));
            }
        });
        ScriptedBackend { addr, blob, stored }
    }
}

fn scripted_session(mut control: TcpStream, served: &[u8], store: &std::sync::Mutex<Vec<u8>>) {
    use std::io::{BufRead, BufReader, Read};
    let _ = control.set_nodelay(true);
    let mut reader = BufReader::new(control.try_clone().expect("clone"));
    let mut user = String::new();
    send(&mut control, &user, b"220 scripted test server\r\n");
    let mut data_listener: Option<TcpListener> = None;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("").to_uppercase();
        let arg = words.next().unwrap_or("").to_string();
        line.clear();
        let reply: Vec<u8> = match verb.as_str() {
            "USER" => {
                user = arg;
                b"331 password please\r\n".to_vec()
            }
            "PASS" => match user.as_str() {
                Hostile::HUGE_LINE => format!("230 {}\r\n", "x".repeat(1 << 20)).into_bytes(),
                Hostile::SILENT => {
                    // Read on (so the gateway's writes succeed) and never answer.
                    let mut sink = Vec::new();
                    let _ = reader.read_to_end(&mut sink);
                    return;
                }
                Hostile::HANGUP => {
                    let _ = control.write_all(b"230-Welcome, and here is a long messa");
                    return;
                }
                _ => b"230 logged in\r\n".to_vec(),
            },
            "TYPE" | "NOOP" => b"200 ok\r\n".to_vec(),
            "PWD" => b"257 \"/\" is the directory\r\n".to_vec(),
            "STAT" => STAT_WITH_227.as_bytes().to_vec(),
            "EPSV" => b"500 EPSV not understood\r\n".to_vec(),
            "PASV" => {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("pasv");
                let port = l.local_addr().expect("addr").port();
                data_listener = Some(l);
                format!(
                    "227 Entering Passive Mode (10,9,9,9,{},{})\r\n",
                    port >> 8,
                    port & 0xff
                )
                .into_bytes()
            }
            "RETR" | "STOR" | "LIST" => {
                let Some(l) = data_listener.take() else {
                    send(&mut control, &user, b"425 no PASV\r\n");
                    continue;
                };
                let (mut data, _) = l.accept().expect("data");
                send(&mut control, &user, b"150 here it comes\r\n");
                match verb.as_str() {
                    "RETR" if user == Hostile::RESET => {
                        let _ = data.write_all(&served[..served.len() / 2]);
                        reset(data);
                        send(
                            &mut control,
                            &user,
                            b"426 Connection reset; transfer aborted\r\n",
                        );
                        continue;
                    }
                    "RETR" => {
                        let _ = data.write_all(served);
                    }
                    "LIST" => {
                        let _ = data.write_all(LISTING_WITH_227.as_bytes());
                    }
                    _ => {
                        let mut got = Vec::new();
                        let _ = data.read_to_end(&mut got);
                        *store.lock().expect("lock") = got;
                    }
                }
                drop(data);
                b"226 done\r\n".to_vec()
            }
            "QUIT" => {
                send(&mut control, &user, b"221 bye\r\n");
                return;
            }
            _ => b"502 not here\r\n".to_vec(),
        };
        send(&mut control, &user, &reply);
    }
}

/// Writes a reply as the session's user wants it: whole, or one byte per write.
fn send(control: &mut TcpStream, user: &str, reply: &[u8]) {
    if user == Hostile::BYTEWISE {
        for b in reply {
            let _ = control.write_all(std::slice::from_ref(b));
        }
    } else {
        let _ = control.write_all(reply);
    }
}

/// Closes a connection with RST (zero linger), as a crashing server's kernel would.
fn reset(stream: TcpStream) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let _ = stream.set_nonblocking(true);
        if let Ok(tcp) = tokio::net::TcpStream::from_std(stream) {
            let _ = tcp.set_zero_linger();
        }
    });
}

/// A scripted explicit-FTPS server, for what a hostile server says to a client (`ftpsgate
/// probe`): its greeting and its reply to `PASS` are the test's, escape sequences and all,
/// and its 227 names `pasv_ip` (while its data listener is on 127.0.0.1). When `pasv_ip` is
/// another address, a listener there on the same port counts who follows the 227 (see
/// [`ScriptedFtps::dialled_elsewhere`]). Serves `LIST` and `NLST` (one name, `listed.txt`) over
/// TLS; `EPSV` and `SIZE` are refused.
pub struct ScriptedFtps {
    pub addr: SocketAddr,
    /// Its certificate (for 127.0.0.1), for a client's `--ca`.
    pub ca: PathBuf,
    /// Data connections its data listeners (on 127.0.0.1) accepted.
    pub data_accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The listeners at the 227's address when it is not 127.0.0.1: never accepted from, so
    /// a connection to one waits in its backlog until counted.
    decoys: std::sync::Arc<std::sync::Mutex<Vec<TcpListener>>>,
    _dir: TempDir,
}

/// What a [`ScriptedFtps`] says.
#[derive(Clone)]
pub struct FtpsScript {
    /// The whole greeting, CRLF included.
    pub greeting: &'static str,
    /// The whole reply to `PASS`, CRLF included.
    pub login: &'static str,
    /// The address its 227 names.
    pub pasv_ip: Ipv4Addr,
}

impl ScriptedFtps {
    pub fn start(script: FtpsScript) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = ftpsgate::tls::self_signed(&["127.0.0.1".into()]).expect("certificate");
        let (ca, _) = pair.write_to(dir.path()).expect("write cert");
        let id = pair.cert_key().expect("certificate and key");
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(ftpsgate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(id.chain, id.key)
                .expect("server config"),
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let data_accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let decoys = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accepted, decoyed) = (data_accepted.clone(), decoys.clone());
        thread::spawn(move || {
            for control in listener.incoming().take(16) {
                let Ok(control) = control else { continue };
                let (config, script) = (config.clone(), script.clone());
                let (accepted, decoyed) = (accepted.clone(), decoyed.clone());
                thread::spawn(move || ftps_session(control, &config, &script, &accepted, &decoyed));
            }
        });
        ScriptedFtps {
            addr,
            ca,
            data_accepted,
            decoys,
            _dir: dir,
        }
    }

    /// Connections made to the 227's address (when it is not 127.0.0.1) so far.
    pub fn dialled_elsewhere(&self) -> usize {
        let decoys = self.decoys.lock().expect("lock");
        decoys
            .iter()
            .map(|l| {
                l.set_nonblocking(true).expect("nonblocking");
                l.incoming().take_while(Result::is_ok).count()
            })
            .sum()
    }
}

fn ftps_session(
    mut control: TcpStream,
    config: &std::sync::Arc<rustls::ServerConfig>,
    script: &FtpsScript,
    accepted: &std::sync::atomic::AtomicUsize,
    decoys: &std::sync::Mutex<Vec<TcpListener>>,
) {
    use std::io::{BufRead, BufReader, Read};
    let _ = control.write_all(script.greeting.as_bytes());
    // Byte by byte up to AUTH TLS's LF: nothing of the handshake after it may be read here.
    let mut auth = Vec::new();
    let mut byte = [0u8; 1];
    while control.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
        auth.push(byte[0]);
    }
    if !auth.to_ascii_uppercase().starts_with(b"AUTH TLS") {
        return;
    }
    let _ = control.write_all(b"234 go ahead\r\n");
    let conn = rustls::ServerConnection::new(config.clone()).expect("TLS");
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, control));
    let mut data_listener: Option<TcpListener> = None;
    let mut line = String::new();
    while tls.read_line(&mut line).is_ok_and(|n| n > 0) {
        let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
        line.clear();
        let reply = match verb.as_str() {
            "USER" => "331 password please\r\n".to_string(),
            "PASS" => script.login.to_string(),
            "PBSZ" | "PROT" | "TYPE" => "200 ok\r\n".to_string(),
            "PASV" => {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("pasv");
                let port = l.local_addr().expect("addr").port();
                data_listener = Some(l);
                if script.pasv_ip != Ipv4Addr::LOCALHOST {
                    let decoy = TcpListener::bind((script.pasv_ip, port)).expect("decoy");
                    decoys.lock().expect("lock").push(decoy);
                }
                let [a, b, c, d] = script.pasv_ip.octets();
                format!(
                    "227 Entering Passive Mode ({a},{b},{c},{d},{},{})\r\n",
                    port >> 8,
                    port & 0xff
                )
            }
            "LIST" | "NLST" => {
                let Some(l) = data_listener.take() else {
                    say(&mut tls, "425 no PASV\r\n");
                    continue;
                };
                let Ok((data, _)) = l.accept() else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                say(&mut tls, "150 here it comes\r\n");
                let conn = rustls::ServerConnection::new(config.clone()).expect("TLS");
                let mut data = rustls::StreamOwned::new(conn, data);
                let listing: &[u8] = if verb == "LIST" {
                    b"-rw-r--r-- 1 ftp ftp 3 Jan 1 00:00 listed.txt\r\n"
                } else {
                    b"listed.txt\r\n"
                };
                let _ = data.write_all(listing);
                data.conn.send_close_notify();
                let _ = data.flush();
                drop(data);
                "226 done\r\n".to_string()
            }
            "QUIT" => {
                say(&mut tls, "221 bye\r\n");
                return;
            }
            "EPSV" => "500 EPSV not understood\r\n".to_string(),
            "SIZE" => "550 no size here\r\n".to_string(),
            _ => "502 not here\r\n".to_string(),
        };
        say(&mut tls, &reply);
    }
}

/// Writes a reply on the TLS control connection and sends it on its way.
fn say(
    tls: &mut std::io::BufReader<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>,
    reply: &str,
) {
    let stream = tls.get_mut();
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.flush();
}
