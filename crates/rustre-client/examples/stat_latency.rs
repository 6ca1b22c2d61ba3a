//! Latency of `stat` through the library: answered from the cache (a held lease) and by a server
//! round trip (the same path with the cache bypassed), beside `stat(2)` of a local file on the
//! same machine in the same run. Also checks that the cached stats sent no request.
//!
//! Run: `cargo run --release -p rustre-client --example stat_latency -- [COUNT]`

use std::time::Instant;

use bytes::Bytes;
use rustre_client::Client;
use rustre_proto::Op;
use rustre_server::{Server, ServerConfig};

#[tokio::main]
async fn main() {
    let count: usize =
        std::env::args().nth(1).map(|count| count.parse().expect("COUNT is a number")).unwrap_or(200_000);
    let scratch = tempfile::tempdir_in("/dev/shm").expect("scratch directory on tmpfs");
    let mut config = ServerConfig::new(scratch.path().join("data"));
    config.root_squash = rustre_server::RootSquash::Off;
    let server = Server::open(config).await.expect("server");
    let address = server.listen("127.0.0.1:0").await.expect("listen").to_string();
    let client = Client::connect(&address).await.expect("connect");
    client.create_dir_all("/a/b/c").await.unwrap();
    client.write("/a/b/c/file", b"x").await.unwrap();
    let ino = client.stat("/a/b/c/file").await.unwrap().ino;

    let requests = client.stats().requests_sent;
    let started = Instant::now();
    for _ in 0..count {
        std::hint::black_box(client.stat("/a/b/c/file").await.unwrap());
    }
    let cached = started.elapsed().as_nanos() as f64 / count as f64;
    let sent = client.stats().requests_sent - requests;

    let round_trips = count.min(20_000);
    let started = Instant::now();
    for _ in 0..round_trips {
        std::hint::black_box(client.call(Op::GetAttr { ino }, Bytes::new()).await.unwrap());
    }
    let uncached = started.elapsed().as_nanos() as f64 / round_trips as f64;

    let local = scratch.path().join("local");
    std::fs::create_dir_all(local.join("a/b/c")).unwrap();
    std::fs::write(local.join("a/b/c/file"), b"x").unwrap();
    let path = local.join("a/b/c/file");
    let started = Instant::now();
    for _ in 0..count {
        std::hint::black_box(std::fs::metadata(&path).unwrap());
    }
    let syscall = started.elapsed().as_nanos() as f64 / count as f64;

    println!("stat of a 4-component path, {count} times (round trips: {round_trips})");
    println!("{:<44} {:>10}", "what", "ns/stat");
    println!("{:<44} {:>10.0}", "rustre library, cached (requests sent: see below)", cached);
    println!("{:<44} {:>10.0}", "rustre library, getattr round trip", uncached);
    println!("{:<44} {:>10.0}", "local stat(2) on tmpfs (reference)", syscall);
    println!("requests sent by the {count} cached stats: {sent}");
    client.close();
    server.shutdown().await;
}
