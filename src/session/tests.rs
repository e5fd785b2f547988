//! Each machine driven alone, over a duplex pipe instead of a socket: the client's side of the
//! pipe is a test, the other end the [`ClientControl`] the machine borrows. The shared context
//! comes from a real gateway bound to loopback port 0, with no backend behind it (none of
//! these commands needs one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::channel::{DataChannel, Parts};
use super::client::ClientControl;
use super::login::Login;
use super::secure::{Protection, Security};
use super::{Answer, Context, Halt};
use crate::config::Settings;
use crate::ftp::addr::EpsvArg;
use crate::ftp::{AuthMechanism, ProtLevel, Request};
use crate::refusal::Refusal;
use crate::server::Gateway;
use crate::tls;

const PEER: &str = "127.0.0.1:40000";
const LOCAL: &str = "127.0.0.1:2121";

async fn context() -> (Gateway, Arc<Context>) {
    let mut s = Settings::default();
    s.listen.explicit = vec!["127.0.0.1:0".parse().expect("addr")];
    let gw = Gateway::bind(s).await.expect("gateway");
    let ctx = gw.context();
    (gw, ctx)
}

fn pipe() -> (ClientControl, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer: SocketAddr = PEER.parse().expect("addr");
    let local: SocketAddr = LOCAL.parse().expect("addr");
    let client = ClientControl::new(Box::new(ours), peer, local, 512, Duration::from_secs(5));
    (client, theirs)
}

fn security(ctx: &Context) -> Security {
    let reuse = ctx.settings.tls.data_session_reuse;
    let tls = tls::session_config(&ctx.tls, reuse).expect("session TLS");
    Security::new(tls, false)
}

fn refused(result: Result<Answer, Halt>) -> Refusal {
    match result {
        Err(Halt::Refused(refusal)) => refusal,
        Err(Halt::Fatal(fatal)) => panic!("fatal: {fatal}"),
        Ok(_) => panic!("answered, not refused"),
    }
}

fn replied(result: Result<Answer, Halt>) -> String {
    match result {
        Ok(Answer::Reply(reply)) => String::from_utf8_lossy(reply.as_bytes()).into_owned(),
        Ok(_) => panic!("no reply to send"),
        Err(Halt::Refused(refusal)) => panic!("refused: {refusal:?}"),
        Err(Halt::Fatal(fatal)) => panic!("fatal: {fatal}"),
    }
}

#[tokio::test]
async fn security_upgrades_in_place_and_sets_protection() {
    let (_gw, ctx) = context().await;
    let (mut client, mut theirs) = pipe();
    let mut security = security(&ctx);
    // PBSZ and PROT before AUTH: refused, nothing changes.
    let before = refused(security.pbsz(Some(0), &client));
    assert_eq!(before.reply().code(), 503);
    let level = Some(ProtLevel::Private);
    assert_eq!(
        refused(security.prot(level, &ctx, &client)).reply().code(),
        503
    );
    assert_eq!(security.protection(), Protection::Clear);

    let mut roots = rustls::RootCertStore::empty();
    for cert in ctx.certs.default_chain() {
        roots.add(cert).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls_client = tokio::spawn(async move {
        let mut code = [0u8; 4];
        theirs.read_exact(&mut code).await.expect("234");
        let mut rest = Vec::new();
        while !rest.ends_with(b"\r\n") {
            let mut byte = [0u8; 1];
            theirs.read_exact(&mut byte).await.expect("234 line");
            rest.extend_from_slice(&byte);
        }
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, theirs).await.expect("handshake");
        tls.write_all(b"NOOP\r\n").await.expect("write");
        tls.flush().await.expect("flush");
        (code, tls)
    });
    let mechanism = Some(AuthMechanism::TlsWithPrivateData);
    let answer = security.auth(mechanism, &ctx, &mut client).await;
    assert!(matches!(answer, Ok(Answer::Sent)), "AUTH answered itself");
    let (code, _tls) = tls_client.await.expect("client");
    assert_eq!(&code, b"234 ");
    assert!(client.is_tls());
    // AUTH SSL (TLS-P) implies PROT P; the client's next line arrives over TLS.
    assert_eq!(security.protection(), Protection::Private);
    let line = client.read_line().await.expect("read").expect("line");
    assert_eq!(line.expect("framed"), b"NOOP");
    assert_eq!(replied(security.pbsz(Some(0), &client)), "200 PBSZ=0\r\n");
    let again = security
        .auth(Some(AuthMechanism::Tls), &ctx, &mut client)
        .await;
    assert_eq!(refused(again).reply().code(), 503);
}

#[tokio::test]
async fn the_data_channel_refuses_bounces_and_waits_for_login() {
    let (_gw, ctx) = context().await;
    let (mut client, _theirs) = pipe();
    let security = security(&ctx);
    let mut login = Login::new(1, tokio::time::Instant::now(), None);
    let mut data = DataChannel::default();
    // What the session's loop lends the data channel for one command.
    macro_rules! parts {
        () => {
            Parts {
                ctx: &ctx,
                client: &mut client,
                login: &mut login,
                security: &security,
            }
        };
    }
    let port = |line: &str| match Request::parse(line.as_bytes().to_vec()) {
        Ok(Request {
            command: crate::ftp::Command::Active(target),
            ..
        }) => target,
        _ => panic!("not PORT or EPRT: {line}"),
    };
    // A third party's address, then the client's own at a privileged port: the FTP bounce.
    let third = port("PORT 192,0,2,9,7,208");
    let refusal = refused(data.active("PORT".into(), third, parts!()).await);
    assert!(matches!(refusal, Refusal::Bounce { .. }), "{refusal:?}");
    let low = port("EPRT |1|127.0.0.1|21|");
    let refusal = refused(data.active("EPRT".into(), low, parts!()).await);
    assert!(matches!(refusal, Refusal::LowPort { .. }), "{refusal:?}");
    // Before login no pool port is leased, and no backend is needed to say so.
    let refusal = refused(data.pasv(parts!()).await);
    assert!(matches!(refusal, Refusal::NotLoggedIn), "{refusal:?}");
    // EPSV ALL is answered at any time, and from then on PASV and PORT are refused.
    let all = replied(data.epsv(Some(EpsvArg::All), parts!()).await);
    assert_eq!(all, "200 EPSV ALL ok.\r\n");
    let refusal = refused(data.pasv(parts!()).await);
    assert!(
        matches!(refusal, Refusal::AfterEpsvAll { .. }),
        "{refusal:?}"
    );
    let mine = port("PORT 127,0,0,1,7,208");
    let refusal = refused(data.active("PORT".into(), mine, parts!()).await);
    assert!(
        matches!(refusal, Refusal::AfterEpsvAll { .. }),
        "{refusal:?}"
    );
    let refusal = refused(data.epsv(Some(EpsvArg::Family(2)), parts!()).await);
    assert!(
        matches!(refusal, Refusal::WrongFamily { family: 1 }),
        "{refusal:?}"
    );
}

#[tokio::test]
async fn the_login_refuses_what_no_backend_should_hear() {
    let (_gw, ctx) = context().await;
    let (mut client, _theirs) = pipe();
    let security = security(&ctx);
    let mut login = Login::new(1, tokio::time::Instant::now(), None);
    let line = |text: &str| Request::parse(text.as_bytes().to_vec()).expect("line").line;
    let pass = login
        .pass(line("PASS x"), &ctx, &mut client, &security)
        .await;
    assert!(matches!(refused(pass), Refusal::PassWithoutUser));
    // Whitespace around a name: refused here, before any backend is connected.
    let name = " root".to_string();
    let user = login.user(name, line("USER  root"), &ctx, &mut client, &security);
    let refusal = refused(user.await);
    assert!(matches!(refusal, Refusal::MalformedUser), "{refusal:?}");
    assert!(login.phase().link().is_none(), "no backend was connected");
    assert!(!login.phase().is_logged_in());
}
