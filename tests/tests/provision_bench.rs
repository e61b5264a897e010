//! Provisioning benchmark (ignored; run by scripts/bench-provision): devices per minute of one
//! `hallmark-provision batch` over BENCH_DEVICES (default 200) simulated TPMs at each
//! BENCH_PARALLEL (default "1 4 16"), with a fresh server and fleet for each run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use hallmark_e2e::server::TestServer;
use hallmark_e2e::station::TestStation;
use hallmark_hwsim::fleet;

#[test]
#[ignore = "benchmark: minutes of work; scripts/bench-provision runs it"]
fn provisioning_throughput() {
    let count: usize = std::env::var("BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let parallels: Vec<usize> = std::env::var("BENCH_PARALLEL")
        .unwrap_or_else(|_| "1 4 16".into())
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let mut rows = Vec::new();
    for &parallel in &parallels {
        let server = TestServer::start();
        let station = TestStation::register(&server, "devices:provision");
        let work = tempfile::tempdir().unwrap();
        let fleet_dir = work.path().join("fleet");
        let started = Instant::now();
        let devices = fleet::up(&fleet_dir, count).unwrap();
        let _down = FleetDown(fleet_dir.clone());
        assert_eq!(devices.len(), count);
        eprintln!(
            "fleet of {count} up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let report = work.path().join("report.jsonl");
        let out = station
            .batch(&fleet_dir.join("manifest.csv"), &report, parallel)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            summary["provisioned"].as_u64(),
            Some(count as u64),
            "{summary}"
        );
        let lines = hallmark_e2e::station::report_lines(&report);
        let mut durations: Vec<u64> = lines
            .iter()
            .map(|l| l["duration_ms"].as_u64().unwrap())
            .collect();
        durations.sort_unstable();
        let p50 = durations[durations.len() / 2];
        let p95 = durations[durations.len() * 95 / 100];
        eprintln!("parallel {parallel}: {summary}");
        rows.push((
            parallel,
            summary["elapsed_ms"].as_u64().unwrap(),
            summary["devices_per_minute"].as_f64().unwrap(),
            p50,
            p95,
            summary["token_requests"].as_u64().unwrap(),
        ));
    }
    println!("\n{count} devices, one batch per row (fresh server and fleet each)");
    println!("| --parallel | wall time (s) | devices/minute | per-device p50 (ms) | p95 (ms) | station tokens |");
    println!("|-----------:|--------------:|---------------:|--------------------:|---------:|---------------:|");
    for (p, ms, rate, p50, p95, tokens) in rows {
        println!(
            "| {p} | {:.1} | {rate:.0} | {p50} | {p95} | {tokens} |",
            ms as f64 / 1000.0
        );
    }
}

struct FleetDown(std::path::PathBuf);

impl Drop for FleetDown {
    fn drop(&mut self) {
        let _ = fleet::down(&self.0);
    }
}
