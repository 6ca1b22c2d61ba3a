//! A simulated client: random calls over a small namespace (so names collide often), each
//! recorded with its outcome, through sessions that break, crash and come back.

use std::pin::Pin;
use std::task::{Context, Poll};

use rustre_client::rustre_proto::{Errno, FileKind, RenameMode};
use rustre_client::{Client, ClientConfig, Connector, File, OpenOptions};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::history::{Call, ClientId, Event, HandleId, Kind, Outcome, READ_LEN, Value};
use crate::{Bugs, CALL_TIME_MAX, Faults, SERVER_HOST, SERVER_PORT, Shared};

/// Files one client holds open at most.
const HANDLES_MAX: usize = 2;
/// How long a client waits before it tries to connect again after a failure.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
/// Connection attempts in a row before the client gives up (the run then reports it).
const CONNECT_ATTEMPTS_MAX: u32 = 200;

/// Directories where names are made, and the names: few, so calls collide.
/// (The root is listed thrice and `/d` twice: calls land there more often.)
const PARENTS: [&str; 7] = ["", "", "", "/d", "/d", "/e", "/d/e"];
/// Directories the workload wants to exist (mkdir picks them more often than other paths).
const DIRECTORIES: [&str; 3] = ["/d", "/e", "/d/e"];
const NAMES: [&str; 4] = ["a", "b", "d", "e"];
const TARGETS: [&str; 5] = ["/d", "/a", "a", "/e/b", "/s"];

pub(crate) fn host_name(client: ClientId) -> String {
    format!("client{client}")
}

/// SplitMix64: small, good enough, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.unit() < probability
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

pub(crate) struct Plan {
    pub client: ClientId,
    pub steps: u32,
    pub seed: u64,
    pub faults: Faults,
    pub bugs: Bugs,
    pub think_max: std::time::Duration,
    pub recorder: Shared,
}

struct Open {
    id: HandleId,
    file: File,
    writable: bool,
}

/// The client host's software.
pub(crate) async fn run(plan: Plan) -> turmoil::Result {
    let mut rng = Rng::new(plan.seed ^ (u64::from(plan.client) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut session: Option<Client> = None;
    let mut handles: Vec<Open> = Vec::new();
    let mut next_handle = 0;
    let mut sessions = 0u64;
    for step in 0..plan.steps {
        if session.is_none() {
            handles.clear();
            session = Some(connect(&plan, &mut rng, sessions).await?);
            sessions += 1;
            plan.recorder.lock().expect("recorder").stats.sessions += 1;
        }
        let client = session.clone().expect("connected");
        let think = plan.think_max.as_millis() as u64;
        tokio::time::sleep(std::time::Duration::from_millis(rng.below(think + 1))).await;
        if rng.chance(plan.faults.crash_rate) {
            // A crash: the session goes with its files open, and nothing is closed politely.
            for open in handles.drain(..) {
                std::mem::forget(open.file);
            }
            client.crash();
            session = None;
            plan.recorder.lock().expect("recorder").stats.crashes += 1;
            continue;
        }
        next_handle += 1;
        let handle = (u64::from(plan.client) << 32) | next_handle;
        let call = choose(&mut rng, &handles, handle);
        let invoked = plan.recorder.lock().expect("recorder").tick();
        let performed = tokio::time::timeout(CALL_TIME_MAX, perform(&client, &call, &mut handles)).await;
        let outcome = match performed {
            Ok(outcome) => outcome,
            Err(_) => {
                let mut recorder = plan.recorder.lock().expect("recorder");
                let text = format!(
                    "client {} step {step}: {call} did not finish within {CALL_TIME_MAX:?} of simulated time",
                    plan.client
                );
                recorder.violations.push(crate::Violation { kind: crate::ViolationKind::Stalled, text });
                Outcome::Unknown
            }
        };
        if outcome == Outcome::Unknown {
            session = None; // a new session for what follows
        } else {
            // The cache's own invariants, after every call (panics, with the seed, if broken).
            client.check_cache_invariants();
        }
        let mut recorder = plan.recorder.lock().expect("recorder");
        let returned = if outcome == Outcome::Unknown { u64::MAX } else { recorder.tick() };
        recorder.stats.calls += 1;
        match &outcome {
            Outcome::Ok(_) => recorder.stats.ok += 1,
            Outcome::Err(_) => recorder.stats.errors += 1,
            Outcome::Unknown => recorder.stats.unknown += 1,
        }
        recorder.history.push(Event { client: plan.client, call, outcome, invoked, returned });
    }
    if let Some(client) = session {
        client.close();
    }
    Ok(())
}

async fn connect(plan: &Plan, rng: &mut Rng, sessions: u64) -> turmoil::Result<Client> {
    let config = ClientConfig {
        client_name: format!("{} session {sessions}", host_name(plan.client)),
        retry_stale_by_name: !plan.bugs.no_stale_retry,
        // A call gives up on a lost server well before the run calls it hung.
        reconnect_wait: CALL_TIME_MAX / 2,
        ..ClientConfig::default()
    };
    // The session reconnects by itself (resume, reclaim, resends) through streams as faulty as
    // the first; their randomness comes from this client's seed, so a run replays exactly.
    let streams = std::sync::Arc::new(std::sync::Mutex::new(Rng::new(rng.next_u64())));
    let (break_rate, recorder) = (plan.faults.break_rate, plan.recorder.clone());
    let faulty = move |stream: turmoil::net::TcpStream, seed: u64| FaultyStream {
        inner: stream,
        rng: Rng::new(seed),
        break_rate,
        broken: false,
        recorder: recorder.clone(),
    };
    let make = faulty.clone();
    let seeds = streams.clone();
    let connector: Connector = std::sync::Arc::new(move || {
        let make = make.clone();
        let seed = seeds.lock().expect("stream seeds").next_u64();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT)).await?;
            Ok(Box::new(make(stream, seed)) as Box<dyn rustre_client::Stream>)
        })
    });
    for _ in 0..CONNECT_ATTEMPTS_MAX {
        let attempt = async {
            let stream = turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT)).await?;
            let seed = streams.lock().expect("stream seeds").next_u64();
            Ok::<_, Box<dyn std::error::Error>>(
                Client::handshake_with(
                    faulty(stream, seed),
                    SERVER_HOST.to_string(),
                    config.clone(),
                    connector.clone(),
                )
                .await?,
            )
        };
        match tokio::time::timeout(CALL_TIME_MAX, attempt).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(_)) | Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
        }
    }
    Err(format!("{} could not connect {CONNECT_ATTEMPTS_MAX} times in a row", host_name(plan.client)).into())
}

fn path(rng: &mut Rng) -> String {
    format!("{}/{}", rng.pick(&PARENTS), rng.pick(&NAMES))
}

/// The next call: mostly namespace calls on colliding names, some on the files held open.
fn choose(rng: &mut Rng, handles: &[Open], handle: HandleId) -> Call {
    let held = !handles.is_empty();
    loop {
        let call = match rng.below(100) {
            0..=14 => {
                let write = rng.chance(0.7);
                let create = write && rng.chance(0.8);
                Call::Open {
                    path: path(rng),
                    write,
                    create,
                    exclusive: create && rng.chance(0.3),
                    truncate: write && rng.chance(0.3),
                    handle,
                }
            }
            15..=24 if held => {
                let open = &handles[rng.below(handles.len() as u64) as usize];
                if open.writable {
                    let length = 1 + rng.below(24) as usize;
                    let stamp = format!("h{}-{}:", open.id, rng.below(1000));
                    let data = stamp.bytes().cycle().take(length.max(stamp.len())).collect();
                    Call::Write { handle: open.id, data }
                } else {
                    Call::Read { handle: open.id }
                }
            }
            25..=29 if held => Call::Read { handle: handles[rng.below(handles.len() as u64) as usize].id },
            30..=37 if held => Call::Close { handle: handles[rng.below(handles.len() as u64) as usize].id },
            38..=47 => Call::Unlink { path: path(rng) },
            48..=57 => Call::Rename { from: path(rng), to: path(rng), noreplace: rng.chance(0.25) },
            58..=66 if rng.chance(0.6) => Call::Mkdir { path: rng.pick(&DIRECTORIES).to_string() },
            58..=66 => Call::Mkdir { path: path(rng) },
            67..=71 => Call::Rmdir { path: path(rng) },
            72..=75 => Call::Link { from: path(rng), to: path(rng) },
            76..=78 => Call::Symlink { target: rng.pick(&TARGETS).to_string(), path: path(rng) },
            79..=91 => Call::Stat { path: path(rng) },
            92..=99 => Call::ReadDir { path: rng.pick(&["/", "/d", "/e", "/d/e"]).to_string() },
            _ => continue, // a call on a handle, without one
        };
        if matches!(call, Call::Open { .. }) && handles.len() >= HANDLES_MAX {
            continue;
        }
        return call;
    }
}

fn kind(kind: FileKind) -> Kind {
    match kind {
        FileKind::Directory => Kind::Directory,
        FileKind::Symlink => Kind::Symlink,
        _ => Kind::File,
    }
}

fn attr(attr: &rustre_client::rustre_proto::Attr) -> Value {
    Value::Attr { kind: kind(attr.kind), size: attr.size, nlink: attr.nlink }
}

/// Makes the call and says what it answered. A lost session is `Unknown`: the call gave up on the
/// server (ENOTCONN), or the server forgot the session (evicted) while a change was in flight or
/// before a call on one of its handles (EIO).
async fn perform(client: &Client, call: &Call, handles: &mut Vec<Open>) -> Outcome {
    let session = client.session();
    let outcome = perform_call(client, call, handles).await;
    let handle_call = matches!(call, Call::Write { .. } | Call::Read { .. } | Call::Close { .. });
    match outcome {
        Outcome::Err(errno) if errno == Errno::EIO.0 && (handle_call || client.session() != session) => {
            Outcome::Unknown
        }
        outcome => outcome,
    }
}

async fn perform_call(client: &Client, call: &Call, handles: &mut Vec<Open>) -> Outcome {
    let result: rustre_client::Result<Value> = match call {
        Call::Open { path, write, create, exclusive, truncate, handle } => {
            let mut options = OpenOptions::new();
            options.read(true).write(*write).truncate(*truncate);
            if *exclusive {
                options.create_new(true);
            } else {
                options.create(*create);
            }
            client.open(path, &options).await.map(|file| {
                let value = Value::Opened { created: file.created(), size: file.cached_attr().size };
                handles.push(Open { id: *handle, file, writable: *write });
                value
            })
        }
        Call::Write { handle, data } => {
            // Written and synced: acknowledged data must survive a server crash.
            let open = handles.iter_mut().find(|open| open.id == *handle).expect("a held handle");
            match open.file.write_at(0, data).await {
                Ok(_) => open.file.fsync().await.map(|()| Value::Done),
                Err(error) => Err(error),
            }
        }
        Call::Read { handle } => {
            let open = handles.iter().find(|open| open.id == *handle).expect("a held handle");
            open.file.read_at(0, READ_LEN).await.map(|data| Value::Data(data.to_vec()))
        }
        Call::Close { handle } => {
            let index = handles.iter().position(|open| open.id == *handle).expect("a held handle");
            handles.remove(index).file.close().await.map(|()| Value::Done)
        }
        Call::Unlink { path } => client.remove_file(path).await.map(|()| Value::Done),
        Call::Rename { from, to, noreplace } => {
            let mode = if *noreplace { RenameMode::NoReplace } else { RenameMode::Replace };
            client.rename_with(from, to, mode).await.map(|()| Value::Done)
        }
        Call::Mkdir { path } => client.mkdir(path, 0o755).await.map(|made| attr(&made)),
        Call::Rmdir { path } => client.remove_dir(path).await.map(|()| Value::Done),
        Call::Link { from, to } => client.hard_link(from, to).await.map(|made| attr(&made)),
        Call::Symlink { target, path } => client.symlink(target, path).await.map(|made| attr(&made)),
        Call::Stat { path } => client.stat(path).await.map(|found| attr(&found)),
        Call::Resolve { .. } | Call::Hop { .. } | Call::Follow { .. } | Call::Act { .. } => {
            unreachable!("the workload makes only client calls")
        }
        Call::ReadDir { path } => client.read_dir(path).await.map(|entries| {
            let mut names: Vec<String> =
                entries.into_iter().map(|entry| String::from_utf8_lossy(&entry.name).into_owned()).collect();
            names.sort();
            Value::Names(names)
        }),
    };
    match result {
        Ok(value) => Outcome::Ok(value),
        Err(error) if error.errno == Errno::ENOTCONN => Outcome::Unknown,
        Err(error) => Outcome::Err(error.errno.0),
    }
}

/// Our own fault layer under a client's connection: on a random write the connection breaks
/// (every later read and write fails), as a reset would.
struct FaultyStream {
    inner: turmoil::net::TcpStream,
    rng: Rng,
    break_rate: f64,
    broken: bool,
    recorder: Shared,
}

impl FaultyStream {
    fn reset() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection broken by the simulator")
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(FaultyStream::reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if !self.broken {
            let rate = self.break_rate;
            if self.rng.chance(rate) {
                self.broken = true;
                self.recorder.lock().expect("recorder").stats.breaks += 1;
            }
        }
        if self.broken {
            return Poll::Ready(Err(FaultyStream::reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(FaultyStream::reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
