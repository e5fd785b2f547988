use super::*;

#[test]
fn rendering_names_every_metric_with_its_labels() {
    let m = Metrics::new();
    m.sessions.inc();
    m.bytes(Direction::Download).inc_by(42);
    m.transfer(Direction::Upload, Outcome::aborted);
    m.handshake(Channel::data, Some(true));
    m.refused(Reason::pool_full);
    m.passive_wait.observe(0.002);
    m.passive_unclaimed.inc();
    let text = m.render();
    for line in [
        "ftpsgate_sessions_total 1",
        "ftpsgate_data_bytes_total{direction=\"download\"} 42",
        "ftpsgate_transfers_total{direction=\"upload\",outcome=\"aborted\"} 1",
        "ftpsgate_tls_handshakes_total{channel=\"data\",outcome=\"ok\",kind=\"resumed\"} 1",
        "ftpsgate_refusals_total{reason=\"pool_full\"} 1",
        "ftpsgate_sessions_active 0",
        "ftpsgate_passive_wait_seconds_count 1",
        "ftpsgate_passive_wait_seconds_bucket{le=\"0.0064\"} 1",
        "ftpsgate_passive_unclaimed_connections_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
}
