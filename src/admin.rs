//! The admin listener: `/metrics` (Prometheus/OpenMetrics text), `/healthz` (the process
//! answers), `/readyz` (the backend answers with its greeting, every ACME certificate is
//! issued, and the gateway is not draining) and `/bans` (the client addresses banned now, JSON). Plain HTTP/1.1 through hyper; it serves operators and probes, never FTP clients.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::session::Context;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves admin requests until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let mut acceptor = crate::accept::Acceptor::new(None);
    loop {
        let (tcp, peer) = acceptor.accept(&listener, &ctx.metrics).await;
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(route(&ctx, req).await) }
            });
            // A slow or silent client is dropped instead of holding a task forever.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

async fn route(ctx: &Context, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            // Read at scrape time rather than tracked on every lease, ban and reload.
            ctx.metrics.leases_in_use.set(ctx.pool.in_use() as i64);
            ctx.metrics.bans_active.set(ctx.access.bans().len() as i64);
            ctx.metrics.certificate_expiries(ctx.certs.expiries());
            typed(text(StatusCode::OK, ctx.metrics.render()), OPENMETRICS)
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // The bans in force on this replica: [{"address": "...", "remaining_secs": N}].
        "/bans" => match serde_json::to_string(&ctx.access.bans()) {
            Ok(json) => typed(text(StatusCode::OK, json + "\n"), "application/json"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/readyz" => {
            if *ctx.draining.borrow() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
            }
            let temporary = ctx.certs.temporary();
            if temporary > 0 {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting for ACME: {temporary} certificate(s) still temporary\n"),
                );
            }
            match ctx.probe_backend().await {
                Ok(_) => text(StatusCode::OK, "ready\n"),
                Err(e) => {
                    warn!(error = %e, "readiness: backend not ready");
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("backend not ready: {e}\n"),
                    )
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /bans\n",
        ),
    }
}

/// `resp` with its Content-Type set to `content_type`.
fn typed(mut resp: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}
