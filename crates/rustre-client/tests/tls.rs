//! TLS on the wire: a client that trusts the cluster's CA works and nothing it sends or
//! receives crosses the wire in clear; a client that trusts something else, or speaks plain TCP
//! to a TLS server (or TLS to a plain one), gets nowhere.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use rustre_client::{Client, ClientConfig, ClientTls};
use rustre_server::tls::{TlsFiles, load_or_generate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// TLS material made as `rustre server --tls` makes it, in a directory of its own.
fn material(names: &[&str]) -> (tempfile::TempDir, TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let (files, made) = load_or_generate(&dir.path().join("tls"), &names).unwrap();
    assert!(made);
    (dir, files)
}

async fn tls_server(files: &TlsFiles) -> TestServer {
    let config = rustre_proto::tls::server_config(&files.chain, &files.key).unwrap();
    TestServer::start_with(|server| server.tls = Some(config)).await
}

fn trusting(ca: &std::path::Path) -> ClientConfig {
    ClientConfig { tls: Some(ClientTls::trusting(ca, None).unwrap()), ..ClientConfig::default() }
}

/// A loopback relay to `target` that keeps a copy of every byte it passes, both ways.
async fn snooping_relay(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let copy = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&target).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pass(client_read, server_write, copy.clone()));
            tokio::spawn(pass(server_read, client_write, copy.clone()));
        }
    });
    (address, seen)
}

async fn pass(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buffer = vec![0u8; 65536];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        seen.lock().unwrap().extend_from_slice(&buffer[..read]);
    }
    let _ = to.shutdown().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

const MARKER: &[u8] = b"a-marker-that-must-not-cross-the-wire-in-clear";

#[tokio::test]
async fn names_and_data_cross_the_wire_encrypted() {
    let (_dir, files) = material(&[]);
    let server = tls_server(&files).await;
    let (relay, seen) = snooping_relay(server.address.clone()).await;
    let client = Client::connect_with(&relay, trusting(&files.ca)).await.expect("a client trusting the CA connects");
    let name = format!("/{}", String::from_utf8_lossy(MARKER));
    client.write(&name, MARKER).await.unwrap();
    assert_eq!(client.read(&name).await.unwrap(), MARKER);
    client.end().await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 2 * MARKER.len(), "the relay saw the session ({} bytes)", seen.len());
    assert!(!contains(&seen, MARKER), "the marker crossed the wire in clear");

    // The control: the same through a plain server shows the marker, so the check can see it.
    let plain = TestServer::start().await;
    let (relay, seen) = snooping_relay(plain.address.clone()).await;
    let client = Client::connect(&relay).await.unwrap();
    client.write("/f", MARKER).await.unwrap();
    client.end().await;
    assert!(contains(&seen.lock().unwrap(), MARKER), "a plain session carries data in clear");
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_is_refused_a_connection() {
    let (_dir, files) = material(&[]);
    let (_other_dir, other) = material(&[]);
    let server = tls_server(&files).await;
    let error = match Client::connect_with(&server.address, trusting(&other.ca)).await {
        Ok(_) => panic!("a client trusting another CA got in"),
        Err(error) => error,
    };
    assert!(error.message.contains("certificate"), "{error:?}");
    // A certificate without the name asked for is refused too.
    let config = ClientConfig {
        tls: Some(ClientTls::trusting(&files.ca, Some("elsewhere.example".into())).unwrap()),
        ..ClientConfig::default()
    };
    let error = Client::connect_with(&server.address, config).await.err().expect("the name does not match");
    assert!(error.message.contains("certificate"), "{error:?}");
    // The server still serves those it should.
    let client = Client::connect_with(&server.address, trusting(&files.ca)).await.unwrap();
    client.mkdir("/ok", 0o755).await.unwrap();
}

#[tokio::test]
async fn plain_and_tls_peers_do_not_talk() {
    let (_dir, files) = material(&[]);
    let server = tls_server(&files).await;
    assert!(Client::connect(&server.address).await.is_err(), "a plain client got into a TLS server");
    let plain = TestServer::start().await;
    assert!(Client::connect_with(&plain.address, trusting(&files.ca)).await.is_err(), "TLS to a plain server");
}

// A peer that accepts the connection and never answers the TLS handshake does not hold the
// client: it gives up after `TLS_HANDSHAKE_TIMEOUT`.
#[tokio::test]
async fn a_server_that_never_answers_the_handshake_is_given_up_on() {
    let (_dir, files) = material(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let connect = Client::connect_with(&address, trusting(&files.ca));
    let bound = rustre_client::TLS_HANDSHAKE_TIMEOUT * 3;
    let error = tokio::time::timeout(bound, connect).await.expect("the client gave up").err().expect("no session");
    assert!(error.message.contains("TLS handshake"), "{error:?}");
    silent.abort();
}
