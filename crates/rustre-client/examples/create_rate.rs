//! Durable creates per second through the library against an in-process server on loopback, at
//! several levels of concurrency, beside a reference run on the same disk: local files created
//! with an fsync of the file and its directory each, by as many threads.
//!
//! Run: `cargo run --release -p rustre-client --example create_rate -- [DIR] [CREATES]`
//! DIR (default: a temporary directory under /var/tmp) must be on the disk to measure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rustre_client::{Client, OpenOptions};
use rustre_server::{Server, ServerConfig};

const CONCURRENCY: [usize; 5] = [1, 4, 16, 64, 256];

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let creates: usize = args.next().map(|count| count.parse().expect("CREATES is a number")).unwrap_or(4000);
    let scratch = tempfile::tempdir_in(&base).expect("scratch directory");
    println!("creates per run: {creates}; disk under {}", base.display());
    println!(
        "{:>11} | {:>17} | {:>15} | {:>24}",
        "concurrency", "rustre creates/s", "fsyncs/create", "local create+fsync/s"
    );

    for concurrency in CONCURRENCY {
        let data = scratch.path().join(format!("rustre-{concurrency}"));
        let mut config = ServerConfig::new(&data);
        config.root_squash = rustre_server::RootSquash::Off;
        let server = Server::open(config).await.expect("server");
        let address = server.listen("127.0.0.1:0").await.expect("listen").to_string();
        let client = Client::connect(&address).await.expect("connect");
        let before = server.commit_stats();
        let started = Instant::now();
        let workers = (0..concurrency).map(|worker| {
            let client = client.clone();
            async move {
                let flags = OpenOptions::new().write(true).create_new(true).flags().unwrap();
                for index in (worker..creates).step_by(concurrency) {
                    let file = client.open_at(1, format!("f{index}").as_bytes(), flags, 0o644).await.unwrap();
                    file.close().await.unwrap();
                }
            }
        });
        futures::future::join_all(workers).await;
        let elapsed = started.elapsed().as_secs_f64();
        let stats = server.commit_stats();
        let fsyncs = (stats.durable_commits - before.durable_commits) as f64 / creates as f64;
        client.close();
        server.shutdown().await;

        let local = local_creates(scratch.path().join(format!("local-{concurrency}")), concurrency, creates);
        println!("{concurrency:>11} | {:>17.0} | {fsyncs:>15.3} | {local:>24.0}", creates as f64 / elapsed);
    }
}

/// Local files created and made durable (fsync of file and directory) by `threads` threads.
fn local_creates(directory: PathBuf, threads: usize, creates: usize) -> f64 {
    std::fs::create_dir_all(&directory).unwrap();
    let directory = Arc::new(directory);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let directory = directory.clone();
            std::thread::spawn(move || {
                let parent = std::fs::File::open(directory.as_path()).unwrap();
                for index in (thread..creates).step_by(threads) {
                    let file = std::fs::File::create(directory.join(format!("f{index}"))).unwrap();
                    file.sync_all().unwrap();
                    parent.sync_all().unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    creates as f64 / started.elapsed().as_secs_f64()
}
