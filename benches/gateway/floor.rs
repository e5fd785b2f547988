//! This machine's floor: loopback TCP (iperf3), one core's AES-GCM (openssl speed), and the CPU
//! per GiB of a plain relay (socat) plus AES-256-GCM, which the throughput part's CPU is
//! judged against.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::net::free_port;

use crate::figures::cpu_secs;
use crate::{Plan, Report};

/// The machine's floor: loopback TCP, one core's AES-GCM, and the CPU a plain relay plus
/// AES-256-GCM spend per GiB (returned: the ratios of the throughput part are against it).
pub(crate) fn measure(plan: &Plan, report: &mut Report) -> Option<f64> {
    let port = free_port().to_string();
    let server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut server) = server {
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-t", "3", "-f", "m"])
            .output();
        let _ = server.wait();
        // "... 2800 MBytes/sec ... receiver" is what we want; parse the receiver line.
        let mibs = out.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("receiver"))
                .and_then(|l| {
                    let parts: Vec<&str> = l.split_whitespace().collect();
                    parts
                        .iter()
                        .position(|p| *p == "Mbits/sec")
                        .and_then(|i| parts.get(i - 1))
                        .and_then(|v| v.parse::<f64>().ok())
                })
        });
        if let Some(mbits) = mibs {
            let mib = mbits * 1e6 / 8.0 / 1048576.0;
            report.figure("floor_loopback_tcp", mib, "MiB/s");
            report.row(
                "floor: loopback TCP (iperf3, 1 stream)",
                format!("{mib:.0} MiB/s"),
            );
        }
    } else {
        report.row(
            "floor: loopback TCP",
            "skipped: iperf3 not installed".into(),
        );
    }
    // AES-256-GCM's rate is kept for the CPU floor below (each measure takes two seconds).
    let mut aes = None;
    for (cipher, label) in [
        ("aes-128-gcm", "AES-128-GCM"),
        ("aes-256-gcm", "AES-256-GCM"),
    ] {
        let rate = openssl_speed(cipher, label);
        if cipher == "aes-256-gcm" {
            aes = rate;
        }
        match rate {
            Some(mib) => {
                let name = format!("floor_{}_one_core", cipher.replace('-', ""));
                report.figure(&name, mib, "MiB/s");
                report.row(
                    &format!("floor: {label}, one core (openssl speed, 16 KiB)"),
                    format!("{mib:.0} MiB/s"),
                );
            }
            None => report.row(
                &format!("floor: {label}"),
                "skipped: openssl not available".into(),
            ),
        }
    }
    // The CPU floor of a TLS-terminating relay: a plain userspace relay's copies plus one
    // core's AES-256-GCM over the same bytes.
    match (relay_cpu(plan.transfer_bytes), aes) {
        (Some(relay), Some(aes)) => {
            let crypt = 1024.0 / aes;
            let floor = relay + crypt;
            report.figure("floor_cpu", floor, "s/GiB");
            report.row(
                "floor: CPU per GiB, socat relay (256 KiB buffers) + AES-256-GCM",
                format!("{relay:.2} + {crypt:.2} = {floor:.2} s/GiB"),
            );
            Some(floor)
        }
        _ => {
            report.row(
                "floor: CPU per GiB",
                "skipped: socat or openssl not installed (see .ci/run)".into(),
            );
            None
        }
    }
}

/// One core's rate for `cipher` on 16 KiB blocks, in MiB/s (`openssl speed`'s last column).
fn openssl_speed(cipher: &str, label: &str) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", cipher, "-bytes", "16384", "-seconds", "2"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let kbs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with(label))?
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse::<f64>()
        .ok()?;
    Some(kbs * 1000.0 / 1048576.0)
}

/// CPU seconds per GiB that socat spends relaying a TCP stream on loopback with 256 KiB
/// buffers: the copies any userspace relay makes, and nothing else.
fn relay_cpu(bytes: u64) -> Option<f64> {
    use std::io::{Read, Write};
    let sink = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    let sink_port = sink.local_addr().ok()?.port();
    let port = free_port();
    let mut socat = Command::new("socat")
        .args([
            "-b",
            "262144",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"),
            &format!("TCP:127.0.0.1:{sink_port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = socat.id();
    let mut sender = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            sender = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(mut sender) = sender else {
        let _ = socat.kill();
        let _ = socat.wait();
        return None;
    };
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = sink.accept().ok()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        Some(got)
    });
    let chunk = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        if sender.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let got = reader.join().ok().flatten();
    // Read while socat is still alive: the sender has not closed yet.
    let cpu = cpu_secs(pid, false);
    drop(sender);
    let _ = socat.kill();
    let _ = socat.wait();
    let gib = bytes as f64 / f64::from(1u32 << 30);
    got.filter(|&g| g >= bytes).and(cpu).map(|c| c / gib)
}
