//! The admin listener read as an operator would: HTTP GET and /metrics parsed by Prometheus' own parser.

use std::net::SocketAddr;
use std::process::Command;

use crate::gateway::TestGateway;
use crate::process::run_ok;

/// GET over HTTP with curl (a real client); returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let out = run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        &format!("http://{addr}{path}"),
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_string())
}

/// Scrapes /metrics and parses it with a Prometheus text parser.
pub fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
pub fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `ftpsgate_refusals_total{reason}` of a gateway with an admin listener.
pub fn refusals(gw: &TestGateway, reason: &str) -> f64 {
    value(
        &scrape(gw.admin.expect("admin")),
        "ftpsgate_refusals_total",
        &[("reason", reason)],
    )
}
