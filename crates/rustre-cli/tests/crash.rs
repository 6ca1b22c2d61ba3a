//! Crash safety with the real binary: the server is killed with SIGKILL in the middle of a
//! concurrent workload, several times in a row; its clients ride through each restart, and every
//! change it acknowledged must be there, once, with nothing the workload cannot explain.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustre_client::{Client, OpenOptions};

#[path = "common/secret.rs"]
mod secret;
use rustre_proto::Errno;
use secret::{test_secret, test_secret_file};

/// A `rustre server` child process, killed when dropped (even when the test fails).
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    fn spawn(data: &std::path::Path, address: &str) -> ServerProcess {
        ServerProcess::spawn_with(data, address, &[])
    }

    fn spawn_with(data: &std::path::Path, address: &str, extra: &[&str]) -> ServerProcess {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rustre"))
            // The default level (info): tests read what the server says it restored.
            .env_remove("RUST_LOG")
            .env("RUSTRE_SECRET_FILE", test_secret_file())
            .env("RUSTRE_ROOT_SQUASH", "off")
            .args(["server", "--data"])
            .arg(data)
            .args(["--listen", address])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning rustre server");
        ServerProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Connects, retrying while the server starts (bounded).
async fn connect(address: &str) -> Client {
    for _ in 0..500 {
        let config = rustre_client::ClientConfig { secret: Some(test_secret()), ..Default::default() };
        if let Ok(client) = Client::connect_with(address, config).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {address} did not come up");
}

/// Where the file of one workload step is, as acknowledged replies say.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// Created, written and fsynced at `f{i}` (contents known).
    Created,
    Renamed,
    Gone,
}

fn contents(worker: usize, index: u64) -> Vec<u8> {
    format!("worker {worker} file {index} ").repeat(1 + (index as usize % 50)).into_bytes()
}

/// One worker, with a session of its own: creates files with fsync, renames every second one,
/// unlinks every third, until told to stop. Every call must succeed: across the server's deaths
/// the session reconnects and resends what was in flight. Returns where each file is.
async fn work(address: String, worker: usize, stop: Arc<AtomicBool>) -> Result<HashMap<u64, Place>, String> {
    let client = connect(&address).await;
    let directory = format!("/w{worker}");
    let mut places = HashMap::new();
    let mut index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let steps: Vec<Place> = match index % 6 {
            0 => vec![Place::Created, Place::Renamed, Place::Gone],
            2 | 4 => vec![Place::Created, Place::Renamed],
            3 => vec![Place::Created, Place::Gone],
            _ => vec![Place::Created],
        };
        for place in steps {
            let result = match place {
                Place::Created => {
                    let path = format!("{directory}/f{index}");
                    async {
                        let mut file = client.open(&path, OpenOptions::new().write(true).create_new(true)).await?;
                        file.write_all(&contents(worker, index)).await?;
                        file.fsync().await?;
                        file.close().await
                    }
                    .await
                }
                Place::Renamed => client.rename(format!("{directory}/f{index}"), format!("{directory}/r{index}")).await,
                Place::Gone => {
                    let current = if index.is_multiple_of(2) { "r" } else { "f" };
                    client.remove_file(format!("{directory}/{current}{index}")).await
                }
            };
            if let Err(error) = result {
                return Err(format!("worker {worker} file {index} {place:?}: {error}"));
            }
            places.insert(index, place);
        }
        index += 1;
    }
    client.end().await;
    Ok(places)
}

/// Checks one worker's directory against where its acknowledged calls put each file.
async fn check(client: &Client, worker: usize, places: &HashMap<u64, Place>) {
    let directory = format!("/w{worker}");
    let listed: BTreeSet<Vec<u8>> = client.read_dir(&directory).await.unwrap().into_iter().map(|e| e.name).collect();
    let mut expected = BTreeSet::new();
    for (&index, place) in places {
        let name = match place {
            Place::Created => format!("f{index}"),
            Place::Renamed => format!("r{index}"),
            Place::Gone => continue,
        };
        let data = client.read(format!("{directory}/{name}")).await;
        assert_eq!(
            data.ok(),
            Some(contents(worker, index)),
            "worker {worker} file {index} ({place:?}) lost or changed"
        );
        expected.insert(name.into_bytes());
    }
    let show = |names: &BTreeSet<Vec<u8>>| {
        names.iter().map(|name| String::from_utf8_lossy(name).into_owned()).collect::<Vec<_>>()
    };
    assert_eq!(
        show(&listed),
        show(&expected),
        "worker {worker}: the directory is not what the acknowledged calls made"
    );
}

/// `rustre fsck` of the data directory (no server on it) finds no problem.
fn fsck_is_clean(data: &std::path::Path, when: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_rustre")).arg("fsck").arg("--data").arg(data).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("clean"),
        "{when}: fsck found problems:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// Kill -9 under load, three times, on one address. The clients reconnect to each new server,
// take their sessions up again and resend what was in flight: every call of the workload succeeds
// (the applications see a pause, not an error) and takes effect exactly once. After each kill the
// store is fsck-clean; at the end every file is where the acknowledged calls put it, with its
// fsynced data, and nothing else is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    const WORKERS: usize = 4;
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let address = free_address();
    let mut server = ServerProcess::spawn(&data, &address);
    let setup = connect(&address).await;
    for worker in 0..WORKERS {
        setup.mkdir(format!("/w{worker}"), 0o755).await.unwrap();
    }
    setup.end().await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..WORKERS).map(|worker| tokio::spawn(work(address.clone(), worker, stop.clone()))).collect();
    // Seeded, so a failure names the delays that produced it.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(150 + seed % 400);
        tokio::time::sleep(delay).await;
        server.kill();
        eprintln!("round {round}: killed after {delay:?}");
        fsck_is_clean(&data, &format!("round {round}, after the kill"));
        server = ServerProcess::spawn(&data, &address);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap_or_else(|error| panic!("a call failed across the kills: {error}")));
    }
    let client = connect(&address).await;
    let mut acknowledged = 0;
    for (worker, places) in results.iter().enumerate() {
        acknowledged += places.len();
        check(&client, worker, places).await;
    }
    eprintln!("{acknowledged} steps acknowledged across the kills");
    assert!(acknowledged > 0, "the workload made no progress");
    client.end().await;
    server.kill();
    fsck_is_clean(&data, "at the end");
}

// An inode unlinked while open is an orphan on disk when the server dies; the next server keeps
// it for the grace period (listed, readable by id) and reclaims it when nobody claimed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_killed_server_survive_the_restart_then_are_reclaimed() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let address = free_address();
    let mut server = ServerProcess::spawn(&data, &address);
    let client = connect(&address).await;
    let mut file = client.open("/doomed", OpenOptions::new().read(true).write(true).create(true)).await.unwrap();
    file.write_all(b"still readable").await.unwrap();
    client.remove_file("/doomed").await.unwrap();
    assert_eq!(file.read_at(0, 100).await.unwrap().as_ref(), b"still readable", "an open orphan reads");
    server.kill();
    drop(file);

    {
        let store = rustre_store::Store::open(&data, &rustre_proto::clock::SystemClock).unwrap();
        assert_eq!(store.read().unwrap().orphans().unwrap().len(), 1, "the orphan is on disk");
    }
    let address = free_address();
    // Long enough that the looks below, right after the start, come first on a loaded machine;
    // its end is then awaited (bounded by it and generous slack), not slept out.
    let grace = Duration::from_secs(5);
    let grace_text = grace.as_secs().to_string();
    let mut server = ServerProcess::spawn_with(&data, &address, &["--orphan-grace", &grace_text]);
    let client = connect(&address).await;
    assert_eq!(client.stat("/doomed").await.unwrap_err().errno, Errno::ENOENT);
    let orphans = client.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "the orphan survived the restart");
    assert!(orphans[0].kept_for_recovery && orphans[0].holders.is_empty(), "kept for recovery: {orphans:?}");
    assert_eq!(client.getattr(orphans[0].attr.ino).await.unwrap().size, 14, "an unclaimed orphan is still there");
    let mut left = orphans.len();
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(30);
    while left > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = client.orphans().await.unwrap().len();
    }
    assert_eq!(left, 0, "the grace period ended and the orphan was reclaimed");
    client.close();
    server.kill();
    let store = rustre_store::Store::open(&data, &rustre_proto::clock::SystemClock).unwrap();
    assert!(store.read().unwrap().orphans().unwrap().is_empty(), "the restarted server reclaimed it");
}

/// Bytes that differ along the file and from one file to the next, so a misplaced or stale
/// piece shows.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|index| (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed).collect()
}

/// Writes `contents` to a new `path` and makes it durable (fsync), then closes it.
async fn durable_file(client: &Client, path: &str, contents: &[u8]) {
    let mut file = client.open(path, OpenOptions::new().write(true).create_new(true)).await.unwrap();
    file.write_all(contents).await.unwrap();
    file.fsync().await.unwrap();
    file.close().await.unwrap();
}

/// What the server's log says it restored at its starts (`reconcile_writable`), counted in the
/// log's text from byte `from` on.
fn sizes_restored(log: &std::path::Path, from: usize) -> usize {
    let text = std::fs::read_to_string(log).unwrap();
    text[from..].matches("restoring the size of a file written before a crash").count()
}

// Writes acknowledged but never fsynced survive a kill -9 of the server. Their size updates are
// committed without an fsync, so the kill loses them, while the bytes are in the data objects
// (the page cache outlives the process); the next start takes each size from its object where
// that is longer, for the files that were open for writing (`reconcile_writable`). Many files,
// each a different case: grown by several writes, grown with a hole, overwritten in place (same
// size), truncated (durably) then written below its old size, truncated only, extended by a
// truncate past its data, appended to, never written, written and closed without fsync, and one
// in a subdirectory. Each must read back exactly as the acknowledged calls left it: no size may
// grow back past a truncate, nor shrink to a data object shorter than the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfsynced_writes_of_many_files_survive_sigkill() {
    use std::collections::BTreeMap;
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let log = data.with_extension("log");
    let address = free_address();
    let mut server = ServerProcess::spawn(&data, &address);
    let client = connect(&address).await;
    // What each file must hold after the restart, and whether the restart must restore its size.
    let mut expected: BTreeMap<&str, (Vec<u8>, bool)> = BTreeMap::new();

    // Before: durable contents, each file closed.
    client.create_dir_all("/sub/deep").await.unwrap();
    let before = [
        ("/same", 1, 10_000),
        ("/shrunk", 2, 65_536),
        ("/cut", 3, 5_000),
        ("/appended", 4, 3_000),
        ("/extended", 5, 100),
    ];
    for (path, seed, len) in before {
        durable_file(&client, path, &bytes(seed, len)).await;
    }
    // Opens for writing (each makes its `WRITABLE` row durable) and truncates: durable changes,
    // all made before the writes under test, so nothing commits durably after those.
    let create = OpenOptions::new().write(true).create_new(true).clone();
    let write = OpenOptions::new().write(true).clone();
    let mut grown = client.open("/grown", &create).await.unwrap();
    let mut sparse = client.open("/sparse", &create).await.unwrap();
    let never = client.open("/never", &create).await.unwrap();
    let mut deep = client.open("/sub/deep/file", &create).await.unwrap();
    let mut closed = client.open("/closed", &create).await.unwrap();
    let mut same = client.open("/same", &write).await.unwrap();
    let mut shrunk = client.open("/shrunk", &write).await.unwrap();
    let mut cut = client.open("/cut", &write).await.unwrap();
    let mut appended = client.open("/appended", OpenOptions::new().write(true).append(true)).await.unwrap();
    let mut extended = client.open("/extended", &write).await.unwrap();
    shrunk.set_len(1_000).await.unwrap();
    cut.set_len(100).await.unwrap();
    // Longer than its data object: the rest reads as zeros, and must stay.
    extended.set_len(10_000).await.unwrap();
    // The first write after a shrink drops the shrink's `CUTS` row in a durable batch (a start
    // must not cut away what it wrote), which would make every write before it durable too:
    // made here, before the writes under test.
    let tail = bytes(14, 500);
    shrunk.write_at(1_000, &tail[..250]).await.unwrap();

    // Under test: acknowledged writes, none fsynced, fewer than `NON_DURABLE_BATCHES_MAX` (64),
    // after which the committer would make one durable anyway.
    let mut contents = Vec::new();
    for (seed, len) in [(10, 1), (11, 4_099), (12, 200_000)] {
        let piece = bytes(seed, len);
        grown.write_all(&piece).await.unwrap();
        contents.extend_from_slice(&piece);
    }
    expected.insert("/grown", (contents, true));
    let hole = 3 << 20;
    sparse.write_at(hole, b"!").await.unwrap();
    let mut contents = vec![0; hole as usize];
    contents.push(b'!');
    expected.insert("/sparse", (contents, true));
    let middle = bytes(13, 1_000);
    same.write_at(4_000, &middle).await.unwrap();
    let mut contents = bytes(1, 10_000);
    contents[4_000..5_000].copy_from_slice(&middle);
    expected.insert("/same", (contents, false));
    shrunk.write_at(1_250, &tail[250..]).await.unwrap();
    let mut contents = bytes(2, 1_000);
    contents.extend_from_slice(&tail);
    expected.insert("/shrunk", (contents, true));
    expected.insert("/cut", (bytes(3, 100), false));
    let mut contents = bytes(5, 100);
    contents.resize(10_000, 0);
    expected.insert("/extended", (contents, false));
    let more = bytes(15, 777);
    appended.write_all(&more).await.unwrap();
    let mut contents = bytes(4, 3_000);
    contents.extend_from_slice(&more);
    expected.insert("/appended", (contents, true));
    expected.insert("/never", (Vec::new(), false));
    let contents = bytes(16, 70_000);
    deep.write_all(&contents).await.unwrap();
    expected.insert("/sub/deep/file", (contents, true));
    let contents = bytes(17, 123_457);
    closed.write_all(&contents).await.unwrap();
    closed.close().await.unwrap();
    expected.insert("/closed", (contents, true));
    // A write after the close, so the close's own bookkeeping (its `WRITABLE` row going) is in
    // a batch the kill loses too.
    grown.write_at(0, &bytes(10, 1)).await.unwrap();
    let must_restore = expected.values().filter(|(_, restored)| *restored).count();

    let logged = std::fs::read_to_string(&log).unwrap().len();
    server.kill();
    client.crash();
    // The handles die with the client, unclosed, as the process holding them would.
    drop((grown, sparse, never, deep, same, shrunk, cut, appended, extended));
    fsck_is_clean(&data, "after the kill");
    let restart = rustre_proto::Timestamp::from_system_time(std::time::SystemTime::now());
    let server = ServerProcess::spawn(&data, &address);
    let reader = connect(&address).await;
    for (path, (contents, restored)) in &expected {
        let attr = reader.stat(path).await.unwrap();
        assert_eq!(attr.size, contents.len() as u64, "{path}: size after the restart");
        if *restored {
            // Content changed: nobody may see the new size beside the mtime of before.
            assert!(attr.mtime >= restart, "{path}: a restored size kept its old mtime {:?}", attr.mtime);
            assert!(attr.ctime >= restart, "{path}: a restored size kept its old ctime {:?}", attr.ctime);
        }
        let read = reader.read(path).await.unwrap();
        assert!(read == *contents, "{path}: contents differ after the restart ({} bytes read)", read.len());
    }
    // The kill did lose the size updates (or this test would not test the restoring): each
    // file written past its durable size was restored, and no other.
    assert_eq!(sizes_restored(&log, logged), must_restore, "sizes the restart restored");
    reader.end().await;
    drop(server);
    fsck_is_clean(&data, "after the restart");
}
