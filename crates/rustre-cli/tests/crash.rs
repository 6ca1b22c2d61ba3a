//! Crash safety with the real binary: the server is killed with SIGKILL in the middle of a
//! concurrent workload, several times in a row, and every change it acknowledged must be there
//! after each restart, with nothing the workload cannot explain.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustre_client::{Client, OpenOptions};
use rustre_proto::Errno;

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
        if let Ok(client) = Client::connect(address).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {address} did not come up");
}

/// Where the file of one workload step is, as far as acknowledged replies say.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// Created, written and fsynced at `f{i}` (contents known).
    Created,
    Renamed,
    Gone,
}

#[derive(Default)]
struct Log {
    acknowledged: HashMap<u64, Place>,
    /// The step in flight when the server died: either outcome is allowed.
    pending: Option<(u64, Place)>,
}

fn contents(worker: usize, index: u64) -> Vec<u8> {
    format!("worker {worker} file {index} ").repeat(1 + (index as usize % 50)).into_bytes()
}

/// One worker: creates files with fsync, renames every second one, unlinks every third, logging
/// each step before it is sent and after it is acknowledged, until the server goes away.
async fn work(client: Client, worker: usize, start: u64, log: Arc<Mutex<Log>>) {
    let directory = format!("/w{worker}");
    let mut index = start;
    loop {
        let steps: Vec<Place> = match index % 6 {
            0 => vec![Place::Created, Place::Renamed, Place::Gone],
            2 | 4 => vec![Place::Created, Place::Renamed],
            3 => vec![Place::Created, Place::Gone],
            _ => vec![Place::Created],
        };
        for place in steps {
            log.lock().unwrap().pending = Some((index, place.clone()));
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
            if result.is_err() {
                return; // the server died: the pending step may or may not have happened
            }
            let mut log = log.lock().unwrap();
            log.acknowledged.insert(index, place);
            log.pending = None;
        }
        index += 1;
    }
}

/// Checks one worker's directory against its log, then settles the pending step to what the
/// crash made of it. Returns the next free index.
async fn check(client: &Client, worker: usize, log: &mut Log) -> u64 {
    let directory = format!("/w{worker}");
    let listed: BTreeSet<Vec<u8>> = client.read_dir(&directory).await.unwrap().into_iter().map(|e| e.name).collect();
    let mut explained = BTreeSet::new();
    let mut indexes: BTreeSet<u64> = log.acknowledged.keys().copied().collect();
    indexes.extend(log.pending.iter().map(|(index, _)| *index));
    for &index in &indexes {
        let (created, renamed) = (format!("f{index}"), format!("r{index}"));
        let at_created = listed.contains(created.as_bytes());
        let at_renamed = listed.contains(renamed.as_bytes());
        let actual = match (at_created, at_renamed) {
            (true, false) => Place::Created,
            (false, true) => Place::Renamed,
            (false, false) => Place::Gone,
            (true, true) => panic!("worker {worker} file {index} is at both names"),
        };
        let acknowledged = log.acknowledged.get(&index).cloned();
        let pending = log.pending.as_ref().filter(|(pending, _)| *pending == index).map(|(_, place)| place.clone());
        let allowed = match (&acknowledged, &pending) {
            (None, Some(Place::Created)) => actual == Place::Gone || actual == Place::Created,
            (Some(done), Some(next)) => actual == *done || actual == *next,
            (Some(done), None) => actual == *done,
            (None, _) => false,
        };
        assert!(
            allowed,
            "worker {worker} file {index}: found {actual:?}, acknowledged {acknowledged:?}, pending {pending:?}"
        );
        let acknowledged_create = acknowledged.is_some();
        let name = match actual {
            Place::Created => Some(created),
            Place::Renamed => Some(renamed),
            Place::Gone => None,
        };
        if let Some(name) = name {
            explained.insert(name.clone().into_bytes());
            if acknowledged_create {
                let data = client.read(format!("{directory}/{name}")).await.unwrap();
                assert_eq!(data, contents(worker, index), "worker {worker} file {index}: fsynced data lost");
            }
        }
    }
    if let Some((index, _)) = log.pending.take() {
        let at_created = listed.contains(format!("f{index}").as_bytes());
        let at_renamed = listed.contains(format!("r{index}").as_bytes());
        let place = match (at_created, at_renamed) {
            (true, _) => Place::Created,
            (_, true) => Place::Renamed,
            _ => Place::Gone,
        };
        if place == Place::Created && !log.acknowledged.contains_key(&index) {
            // A create cut short may hold partial contents: take it out of the workload.
            client.remove_file(format!("{directory}/f{index}")).await.unwrap();
            log.acknowledged.insert(index, Place::Gone);
        } else {
            log.acknowledged.insert(index, place);
        }
    }
    let unexplained: Vec<_> =
        listed.difference(&explained).map(|name| String::from_utf8_lossy(name).into_owned()).collect();
    assert!(unexplained.is_empty(), "worker {worker}: names nobody made: {unexplained:?}");
    indexes.last().map_or(0, |last| last + 1)
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

// Kill -9 under load, three times: after each restart every acknowledged create (with its fsynced
// data), rename and unlink is there, in-flight ones either happened or did not, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    const WORKERS: usize = 4;
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let mut starts = vec![0u64; WORKERS];
    // One log per worker for the whole test: every round's acknowledgements stay checked.
    let logs: Vec<_> = (0..WORKERS).map(|_| Arc::new(Mutex::new(Log::default()))).collect();
    // Seeded, so a failure names the delays that produced it.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..3 {
        let address = free_address();
        let mut server = ServerProcess::spawn(&data, &address);
        let client = connect(&address).await;
        if round == 0 {
            for worker in 0..WORKERS {
                client.mkdir(format!("/w{worker}"), 0o755).await.unwrap();
            }
        }
        let tasks: Vec<_> = (0..WORKERS)
            .map(|worker| tokio::spawn(work(client.clone(), worker, starts[worker], logs[worker].clone())))
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(100 + seed % 400);
        tokio::time::sleep(delay).await;
        server.kill();
        for task in tasks {
            task.await.unwrap();
        }
        client.close();
        fsck_is_clean(&data, &format!("round {round}, after the kill"));

        let address = free_address();
        let _restarted = ServerProcess::spawn(&data, &address);
        let client = connect(&address).await;
        eprintln!("round {round}: killed after {delay:?}, starts {starts:?}");
        let mut acknowledged = 0;
        for worker in 0..WORKERS {
            // The tasks are done; the log leaves its mutex for the (async) check and comes back.
            let mut log = std::mem::take(&mut *logs[worker].lock().unwrap());
            acknowledged += log.acknowledged.len();
            starts[worker] = check(&client, worker, &mut log).await.max(starts[worker]);
            *logs[worker].lock().unwrap() = log;
        }
        assert!(acknowledged > 0, "round {round} (kill after {delay:?}): the workload made no progress");
        client.close();
    }
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
    let mut server = ServerProcess::spawn_with(&data, &address, &["--orphan-grace", "2"]);
    let client = connect(&address).await;
    assert_eq!(client.stat("/doomed").await.unwrap_err().errno, Errno::ENOENT);
    let orphans = client.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "the orphan survived the restart");
    assert_eq!(client.getattr(orphans[0].ino).await.unwrap().size, 14, "an unclaimed orphan is still there");
    let mut left = orphans.len();
    for _ in 0..100 {
        left = client.orphans().await.unwrap().len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the grace period ended and the orphan was reclaimed");
    client.close();
    server.kill();
    let store = rustre_store::Store::open(&data, &rustre_proto::clock::SystemClock).unwrap();
    assert!(store.read().unwrap().orphans().unwrap().is_empty(), "the restarted server reclaimed it");
}
