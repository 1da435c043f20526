//! How fast the fleet dashboard (`arbiter audit serve --nats`) reads a stream, and in how much
//! memory: `fleet_ingest ARBITER [EVENTS] [INSTANCES] [WINDOW] [--state]`.
//!
//! Starts `nats-server -js` on 127.0.0.1 (a port of its own, a store in a temporary folder),
//! publishes EVENTS synthetic events (default 1,000,000; `audit_fixture`'s events, each
//! instance's hash-chained, INSTANCES instances, default 8) to a stream, then starts the
//! dashboard on it and polls `/api/events` until it has read the stream's last message. Prints
//! the time, events per second, the dashboard's CPU time, RSS and peak RSS, and checks the
//! totals (every event counted, every chain verified). Everything it starts it stops; every
//! wait is bounded.
// A measuring tool run by hand: anything unexpected stops it, loudly.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arbiter_engine::audit::chain::{GENESIS, seal};

const STREAM: &str = "FLEET";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(14222)
}

fn get(addr: &str, target: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// (VmRSS, VmHWM) in KiB, and CPU seconds (user + system), of process `pid`.
fn usage(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command's `)`.
    (
        kib("VmRSS:"),
        kib("VmHWM:"),
        (ticks(11) + ticks(12)) / 100.0,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(arbiter) = args.get(1) else {
        eprintln!("usage: fleet_ingest ARBITER [EVENTS] [INSTANCES] [WINDOW] [--state]");
        std::process::exit(2);
    };
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (events, instances, window) = (num(2, 1_000_000), num(3, 8).max(1), num(4, 100_000));
    let with_state = args.iter().any(|a| a == "--state");
    let dir = std::env::temp_dir().join(format!("arbiter-fleet-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary folder");

    let port = free_port();
    let _nats = Killed(
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    // Publish: each instance's events chained, instances interleaved.
    let published = rt.block_on(async {
        let start = Instant::now();
        let client = loop {
            match async_nats::connect(&url).await {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("nats-server did not start: {e}"),
            }
        };
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["arbiter.decisions.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("the stream");
        let mut prev = vec![GENESIS.to_string(); instances];
        let mut acks = std::collections::VecDeque::new();
        let start = Instant::now();
        for i in 0..events {
            let k = i % instances;
            let mut e = arbiter_benches::synthetic_event(i, 1_795_000_000);
            e.insert(
                "labels".into(),
                serde_json::json!({"id": format!("arbiter-{k}"), "version": "0.1.0"}),
            );
            let (mut line, hash) = seal(e, &prev[k]);
            prev[k] = hash;
            line.pop();
            acks.push_back(
                js.publish(format!("arbiter.decisions.arbiter-{k}"), line.into())
                    .await
                    .expect("publish"),
            );
            if acks.len() >= 4096
                && let Some(a) = acks.pop_front()
            {
                a.await.expect("an acknowledgement");
            }
        }
        for a in acks {
            a.await.expect("an acknowledgement");
        }
        start.elapsed()
    });
    println!(
        "published {events} events of {instances} instances in {:.1} s",
        published.as_secs_f64()
    );

    // Read.
    let mut cmd = Command::new(arbiter);
    cmd.args(["audit", "serve", "--addr", "127.0.0.1:0", "--nats", &url])
        .args(["--stream", STREAM, "--window", &window.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if with_state {
        cmd.arg("--state").arg(dir.join("dashboard.state"));
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("arbiter");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let dashboard = Killed(child);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let line = lines.next().and_then(Result::ok).expect("an announcement");
        if let Some(u) = line.split("serving http://").nth(1) {
            break u.trim_end_matches('/').to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let mut peak_rss = 0;
    let read = loop {
        let v = get(&addr, "/api/events");
        let (rss, _, _) = usage(pid);
        peak_rss = peak_rss.max(rss);
        if v.as_ref()
            .and_then(|v| v["stream"]["last_sequence"].as_u64())
            == Some(events as u64)
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "not read in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (rss, hwm, cpu) = usage(pid);
    let summary = get(&addr, "/api/summary").expect("the summary");
    let chain = get(&addr, "/api/events").expect("the events");
    assert_eq!(
        summary["events"].as_u64(),
        Some(events as u64),
        "every event counted"
    );
    assert_eq!(chain["chain"]["ok"], true, "every chain verified");
    println!(
        "read {events} events in {:.2} s: {:.0} events/s; dashboard CPU {:.2} s ({:.1} µs/event); RSS {:.1} MiB after (peak seen {:.1} MiB, VmHWM {:.1} MiB); window {window}{}",
        read.as_secs_f64(),
        events as f64 / read.as_secs_f64(),
        cpu,
        cpu * 1e6 / events as f64,
        rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        if with_state {
            ", saving its state every 5 s"
        } else {
            ""
        },
    );
    drop(dashboard);
    let _ = std::fs::remove_dir_all(&dir);
}
