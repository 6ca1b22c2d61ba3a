//! `rustre`: runs a server (`server`, `up`), talks to one (`ls`, `stat`, `mkdir`, `put`, `get`,
//! `cat`, `rm`, `mv`), races clients on a few names to find contract violations (`race`), and
//! measures file systems side by side (`bench`, `bench-compare`).
//!
//! Errors end the command with exit status 1 and one line on stderr, `rustre: <what failed>`.
//! Commands taking several paths go on after a failing one, as their coreutils namesakes do.
//! With `--client-stats`, a client command, once done (successful or not), also prints its
//! client's counters on stderr.

use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use output::{LongRow, write_long};
use rustre_client::rustre_proto::{Attr, Errno, FileKind};
use rustre_client::{Client, ClientConfig, Entry, OpenOptions};
use rustre_server::{RootSquash, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{Signal, SignalKind, signal};

mod bench;
mod logging;
mod mountpoint;
mod output;
mod race;
mod report;
mod scale;
mod sim;

/// The most bytes one read or write of `put`, `get` and `cat` moves.
const CHUNK: usize = 1 << 20;

/// Where `rustre server` keeps the cluster secret in its data directory, unless given one.
const SECRET_FILE_NAME: &str = "secret";

/// The cluster secret this process's clients prove: set once, before the first client connects
/// (from `--secret-file`, or, for `rustre up`, the secret of the server it runs).
static CLUSTER_SECRET: std::sync::OnceLock<Option<rustre_client::Secret>> = std::sync::OnceLock::new();

/// TLS for this process's clients: set once, like the secret (from `--tls-ca`, or, for
/// `rustre up --tls`, the CA of the server it runs).
static CLUSTER_TLS: std::sync::OnceLock<Option<rustre_client::ClientTls>> = std::sync::OnceLock::new();

/// The base configuration of every client this process makes.
pub(crate) fn client_config() -> ClientConfig {
    ClientConfig {
        secret: CLUSTER_SECRET.get().cloned().flatten(),
        tls: CLUSTER_TLS.get().cloned().flatten(),
        ..ClientConfig::default()
    }
}

/// Loads the secret file given, if any.
fn load_secret(file: Option<&Path>) -> anyhow::Result<Option<rustre_client::Secret>> {
    file.map(|file| rustre_client::Secret::load(file).map_err(anyhow::Error::from)).transpose()
}

/// A server's configuration on `data`, with its cluster secret: the file given, or DATA/secret
/// (made, with a new random secret, on the first start); and its TLS files, if it speaks TLS.
fn server_config(
    data: &Path,
    secret_file: Option<&Path>,
    root_squash: bool,
    tls: &ServerTls,
    listen: &str,
) -> anyhow::Result<(ServerConfig, Option<rustre_server::tls::TlsFiles>)> {
    let secret = match secret_file {
        Some(file) => rustre_client::Secret::load(file)?,
        None => {
            std::fs::create_dir_all(data).with_context(|| format!("making the data directory {}", data.display()))?;
            let file = data.join(SECRET_FILE_NAME);
            let (secret, made) = rustre_client::Secret::load_or_generate(&file)?;
            if made {
                tracing::info!(file = %file.display(), "made a new cluster secret; clients need it (--secret-file)");
            }
            secret
        }
    };
    let mut config = ServerConfig::new(data);
    config.secret = Some(secret);
    config.root_squash = if root_squash { RootSquash::NOBODY } else { RootSquash::Off };
    let files = tls.files(data, listen)?;
    if let Some(files) = &files {
        config.tls = Some(rustre_client::rustre_proto::tls::server_config(&files.chain, &files.key)?);
        tracing::info!(chain = %files.chain.display(), "TLS on; clients trust {}", files.ca.display());
    }
    Ok((config, files))
}

/// TLS of `rustre server` and `rustre up`.
#[derive(clap::Args, Debug)]
struct ServerTls {
    /// Speak TLS 1.3 on the listener. Without --tls-cert, the first start makes a cluster CA and
    /// a certificate in DATA/tls; clients trust DATA/tls/ca.pem (--tls-ca).
    #[arg(long)]
    tls: bool,
    /// The server's certificate chain (PEM, its own certificate first), with --tls-key, instead
    /// of the one made in DATA/tls. Implies --tls.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Names (DNS names or IP addresses, comma-separated) that the certificate made on the first
    /// start carries, besides localhost, 127.0.0.1, ::1 and the host of --listen.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    tls_san: Vec<String>,
}

impl ServerTls {
    /// The chain, key and CA to use, made first in DATA/tls if need be; `None` without TLS.
    fn files(&self, data: &Path, listen: &str) -> anyhow::Result<Option<rustre_server::tls::TlsFiles>> {
        if let (Some(chain), Some(key)) = (&self.tls_cert, &self.tls_key) {
            // Whoever made them knows the CA; the chain's last certificate is a good guess for
            // this process's own clients (`rustre up`).
            return Ok(Some(rustre_server::tls::TlsFiles {
                ca: chain.clone(),
                chain: chain.clone(),
                key: key.clone(),
            }));
        }
        if !self.tls {
            return Ok(None);
        }
        let mut names = self.tls_san.clone();
        if let Ok(address) = listen.parse::<SocketAddr>()
            && !address.ip().is_unspecified()
        {
            names.push(address.ip().to_string());
        }
        let (files, made) = rustre_server::tls::load_or_generate(&data.join("tls"), &names)?;
        if made {
            tracing::info!(ca = %files.ca.display(), "made a cluster CA and a server certificate; clients trust the CA (--tls-ca)");
        }
        Ok(Some(files))
    }
}

#[derive(Parser, Debug)]
#[command(name = "rustre", version, about = "rustre, a network file system")]
struct Cli {
    /// Address of the server the client commands talk to.
    #[arg(long, global = true, env = "RUSTRE_SERVER", default_value = "127.0.0.1:7070", value_name = "ADDR")]
    server: String,

    /// After a client command, print the client's counters (requests, cache hits) on stderr.
    #[arg(long, global = true)]
    client_stats: bool,

    /// The file holding the cluster secret (hexadecimal), which clients prove to the server
    /// without sending it. `rustre server` reads it from here, or by default from DATA/secret,
    /// which it writes on its first start; `rustre up` needs nothing.
    #[arg(long, global = true, env = "RUSTRE_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// Client commands speak TLS to the server, trusting the certificates in FILE (PEM): the
    /// cluster's CA, DATA/tls/ca.pem of a `rustre server --tls`. `rustre up --tls` needs nothing.
    #[arg(long, global = true, env = "RUSTRE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// The name the server's certificate must carry (default: the host of the server's address).
    #[arg(long, global = true, env = "RUSTRE_TLS_NAME", value_name = "NAME")]
    tls_name: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Lists orphans (files and directories whose last name is gone) and what keeps each alive:
    /// the open handles and the kernel references (pins of a mount) of each client session, or
    /// the recovery after a server restart.
    Orphans,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a server on a data directory until SIGINT or SIGTERM.
    Server {
        /// The data directory (created if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
        listen: String,
        /// Seconds that the clients of the previous run (after a crash or a restart) have to come
        /// back and take back their open files; changes wait meanwhile, unless they all came back.
        /// Also how long a client whose connection broke keeps its session. Orphans of the
        /// previous run nobody claimed in that time are destroyed.
        #[arg(long, alias = "orphan-grace", default_value_t = rustre_server::RECOVERY_GRACE_DEFAULT.as_secs(),
              value_name = "SECONDS")]
        recovery_grace: u64,
        /// Megabytes of free space on the data directory's file system that writes and creates
        /// leave alone (they answer ENOSPC), so metadata commits and deletes always have room.
        #[arg(long, default_value_t = rustre_server::SPACE_RESERVE_DEFAULT >> 20, value_name = "MB")]
        space_reserve: u64,
        /// Fault injection for control runs of `rustre race`: every Nth open answers ESTALE.
        #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        fault_estale_every: Option<u64>,
        /// Root squash: the superuser of a client machine acts here as `nobody` (uid and gid
        /// 65534), so no client machine gets root's power over the file system. `off` trusts
        /// client roots as root.
        #[arg(long, env = "RUSTRE_ROOT_SQUASH", default_value = "on", value_name = "on|off",
              action = clap::ArgAction::Set, value_parser = parse_on_off, hide_possible_values = true)]
        root_squash: bool,
        #[command(flatten)]
        tls: ServerTls,
    },
    /// Checks a data directory offline (no server may run on it): link counts, dangling entries,
    /// nameless inodes, data objects without a file, orphans. Exits 1 if it finds problems.
    Fsck {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Fix what can be fixed without losing anything: nameless inodes are linked into
        /// /lost+found, data objects nobody owns are moved to DIR/lost+found/, counts recounted.
        #[arg(long)]
        repair: bool,
    },
    /// Starts a server and mounts it on MOUNTPOINT (created if missing) until Ctrl-C, then
    /// unmounts and stops. Without a mountpoint, serves and shows it working through a client.
    Up {
        /// Where to mount (a directory; created if missing).
        mountpoint: Option<PathBuf>,
        /// The data directory (created if missing).
        #[arg(long, env = "RUSTRE_DATA", default_value = "./rustre-data", value_name = "DIR")]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
        listen: String,
        /// Root squash (see `rustre server`). Off here by default: `up` serves this machine, whose
        /// root owns the data directory anyway; turn it on when other machines mount this server.
        #[arg(long, env = "RUSTRE_ROOT_SQUASH", default_value = "off", value_name = "on|off",
              action = clap::ArgAction::Set, value_parser = parse_on_off)]
        root_squash: bool,
        /// Seconds the clients of the previous run have to come back after a crash (see
        /// `rustre server`). A clean stop (Ctrl-C) ends `up`'s own mount's session, so the next
        /// `up` does not wait for it; other mounts of the last run are waited for.
        #[arg(long, default_value_t = rustre_server::RECOVERY_GRACE_DEFAULT.as_secs(), value_name = "SECONDS")]
        recovery_grace: u64,
        /// Megabytes of free space that writes and creates leave alone (see `rustre server`).
        #[arg(long, default_value_t = rustre_server::SPACE_RESERVE_DEFAULT >> 20, value_name = "MB")]
        space_reserve: u64,
        #[command(flatten)]
        tls: ServerTls,
    },
    /// Mounts the file system of the server at SERVER (host:port) on MOUNTPOINT with FUSE, until
    /// SIGINT, SIGTERM or `umount MOUNTPOINT`. Several mounts of one server stay coherent.
    Mount {
        server: String,
        mountpoint: PathBuf,
        /// Threads reading kernel requests.
        #[arg(long, default_value_t = rustre_fuse::THREADS_DEFAULT)]
        threads: usize,
        /// Entries the client caches (names and attributes, each under a lease); beyond, the
        /// least recently used are given back to the server. An `ls -l` of a directory larger
        /// than this asks the server for every entry.
        #[arg(long, default_value_t = rustre_client::CACHE_ENTRIES_MAX, value_name = "N",
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 24))]
        cache_entries: usize,
        /// Fail a request with EIO once it has waited SECONDS for an unreachable server (an NFS
        /// `soft` mount). Without it, requests wait for the server as long as it takes (`hard`).
        ///
        /// Either way the mount stays and recovers when the server is back, and its log says
        /// when the server becomes unreachable and when it is back. The wait starts when the
        /// mount finds the server gone: at once if its connection closes, after about 10 s of
        /// silence if it vanishes without a word.
        ///
        /// Hard, the default: a process using the mount waits, and cannot be killed meanwhile
        /// (not even with SIGKILL: the mount has its request), until the server is back or the
        /// mount is stopped (Ctrl-C or SIGTERM to this command; then what waits fails with EIO).
        ///
        /// Soft: nothing waits longer than SECONDS, but applications get EIO for calls whose
        /// outcome is unknown. A write, rename, unlink or create that fails so may have been
        /// made anyway (the server may have had it before it became unreachable), and an
        /// application that takes the error for "nothing happened", or gives up half way
        /// through its work, may lose or duplicate data; a read or stat that fails may make a
        /// build or a script fail. Choose it where hanging is worse than an error (interactive
        /// use, monitoring), not under databases or anything that must not stop half way.
        #[arg(long, value_name = "SECONDS",
              value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=86_400))]
        soft_timeout: Option<u64>,
    },
    /// Lists a directory (or shows a single non-directory).
    Ls {
        /// Long format: type, permissions, links, owner, group, size, mtime, name.
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: PathBuf,
    },
    /// Shows the attributes of what each path names (following symlinks), one after another.
    Stat {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Makes directories.
    Mkdir {
        /// Make missing parents too; existing directories are fine.
        #[arg(short = 'p', long = "parents")]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Changes permission bits (octal, as chmod(1): 755, 1777, 2775).
    Chmod {
        #[arg(value_parser = parse_mode)]
        mode: u32,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Changes owner and group, as chown(1) with numeric ids: UID, UID:GID or :GID.
    Chown {
        #[arg(value_parser = parse_owner)]
        owner: (Option<u32>, Option<u32>),
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Copies a local file into rustre (into PATH/<name> when PATH is a directory).
    Put { local: PathBuf, path: PathBuf },
    /// Copies a file out of rustre (into LOCAL/<name> when LOCAL is a directory).
    Get { path: PathBuf, local: PathBuf },
    /// Writes files' contents to stdout.
    Cat {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Removes files (and with -r, directories with everything below them).
    Rm {
        /// Remove directories and their contents.
        #[arg(short = 'r', short_alias = 'R', long = "recursive")]
        recursive: bool,
        /// Ignore paths that do not exist.
        #[arg(short = 'f', long = "force")]
        force: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Renames SRC to DST, or moves it into DST when DST is a directory.
    Mv { src: PathBuf, dst: PathBuf },
    /// Administration of a server.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Races clients on a few names for a while; reports ops/s, errnos and violations.
    ///
    /// Creators, exclusive creators, unlinkers, renamers and readers race in rustre through
    /// several client sessions (`--server`, `--clients`), or in local directories (`--dirs`).
    /// Exits 1 on any violation of the contract: ESTALE, EIO, a failed O_CREAT open, not exactly
    /// one O_EXCL winner per round, ...
    Race(race::RaceArgs),
    /// Benchmarks a file system phase by phase (create, stat, open, rename, unlink, mkdir, rmdir,
    /// readdir, sequential and random I/O), with latency percentiles: on any directories (a
    /// mount, tmpfs, ...) or, without DIR, on rustre through the library (`--server`).
    Bench(bench::BenchArgs),
    /// Puts the reports of several `rustre bench --json` runs side by side: a Markdown table,
    /// and an SVG chart with `--svg`.
    BenchCompare(bench::CompareArgs),
    /// Many sessions and a large namespace against a server on this machine: its memory per
    /// namespace entry, per session and per lease (from /proc/PID/status). Leaves its directory.
    Scale(scale::ScaleArgs),
    /// Runs the deterministic simulator: real server and clients on a simulated network with
    /// faults, every answer checked for linearizability. One seed replays a run exactly.
    Sim(sim::SimArgs),
}

impl Command {
    fn runs_server(&self) -> bool {
        matches!(self, Command::Server { .. } | Command::Up { .. } | Command::Mount { .. })
    }
}

/// An error already reported on stderr: only the exit status is left to set.
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("errors reported above")
    }
}

impl std::error::Error for Reported {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator breaks connections on purpose: what the hosts log of it is noise there.
    let default_level = match &cli.command {
        Command::Sim(_) => "off",
        command if command.runs_server() => "info",
        _ => "warn",
    };
    logging::init(default_level);

    if let Command::Sim(args) = cli.command {
        // The simulator runs its own runtimes (one per simulated host), never inside ours.
        return match sim::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("rustre: {}", one_line(&error));
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rustre: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray background tasks (a file close in flight) at exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<Reported>() => ExitCode::FAILURE,
        // A closed stdout (`rustre cat f | head`) is the reader's choice, not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rustre: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// `rustre fsck`: the report in plain words; problems make the exit status 1.
fn fsck(data: &std::path::Path, repair: bool) -> anyhow::Result<()> {
    let report = rustre_store::fsck(data, repair).with_context(|| format!("checking {}", data.display()))?;
    for done in &report.repaired {
        println!("repaired: {done}");
    }
    println!(
        "{}: {} inodes ({} directories), {} entries, {} data objects",
        data.display(),
        report.inodes,
        report.directories,
        report.entries,
        report.objects
    );
    if !report.orphans.is_empty() {
        println!(
            "note: {} orphans (open when the server stopped); the server destroys them after its grace period \
             unless their clients reclaim them",
            report.orphans.len()
        );
    }
    if report.sessions > 0 {
        println!(
            "note: {} client sessions of the last run; at start the server waits for them to come back \
             (--recovery-grace)",
            report.sessions
        );
    }
    if report.writable > 0 {
        println!("note: {} files were open for writing; the server checks their sizes at start", report.writable);
    }
    if !report.doomed.is_empty() {
        println!(
            "note: {} data objects of destroyed files are still on disk; the server removes them when it starts",
            report.doomed.len()
        );
    }
    if !report.long_objects.is_empty() {
        println!(
            "note: {} data objects hold bytes past their file's size (never read; --repair cuts them)",
            report.long_objects.len()
        );
    }
    for problem in &report.problems {
        let fix = if problem.repairable() { "" } else { " (not repairable safely)" };
        println!("problem: {problem}{fix}");
    }
    if report.problems_unlisted > 0 {
        println!("problem: {} more not listed", report.problems_unlisted);
    }
    if report.clean() {
        println!("clean");
        return Ok(());
    }
    let hint = if repair { "" } else { "; run again with --repair to fix what can be fixed" };
    eprintln!("rustre fsck: {} problems{hint}", report.problems.len() as u64 + report.problems_unlisted);
    Err(Reported.into())
}

/// The error with its causes, on one line: `what failed: why: why`. A cause whose text its
/// parent already ends with (an error that prints its source and also names it as its source)
/// is said once.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    cli.server = with_default_port(&cli.server);
    let secret_file = cli.secret_file.as_deref();
    if !matches!(cli.command, Command::Up { .. } | Command::Server { .. }) {
        let secret = load_secret(secret_file)?;
        assert!(CLUSTER_SECRET.set(secret).is_ok(), "the secret is set once");
        let tls = cli.tls_ca.as_deref().map(|ca| rustre_client::ClientTls::trusting(ca, cli.tls_name.clone()));
        assert!(CLUSTER_TLS.set(tls.transpose()?).is_ok(), "TLS is set once");
    }
    match cli.command {
        Command::Server { data, listen, recovery_grace, space_reserve, fault_estale_every, root_squash, tls } => {
            let listen = with_default_port(&listen);
            let (mut config, _) = server_config(&data, secret_file, root_squash, &tls, &listen)?;
            config.recovery_grace = std::time::Duration::from_secs(recovery_grace);
            config.space_reserve = space_reserve << 20;
            config.fault_estale_every_nth_open = fault_estale_every;
            serve(config, &listen).await
        }
        Command::Up { mountpoint, data, listen, root_squash, recovery_grace, space_reserve, tls } => {
            let listen = with_default_port(&listen);
            // Its own clients prove the secret of the server it runs, and trust its certificate.
            let (mut config, files) = server_config(&data, secret_file, root_squash, &tls, &listen)?;
            config.recovery_grace = std::time::Duration::from_secs(recovery_grace);
            config.space_reserve = space_reserve << 20;
            assert!(CLUSTER_SECRET.set(config.secret.clone()).is_ok(), "the secret is set once");
            let trusted = match (&cli.tls_ca, files) {
                (_, None) => None,
                (Some(ca), Some(_)) => Some(ca.clone()),
                (None, Some(files)) => Some(files.ca),
            };
            let own = trusted.as_deref().map(|ca| rustre_client::ClientTls::trusting(ca, cli.tls_name.clone()));
            let own = own.transpose()?;
            assert!(CLUSTER_TLS.set(own).is_ok(), "TLS is set once");
            let secret = secret_file.map_or_else(|| data.join(SECRET_FILE_NAME), Path::to_path_buf);
            let shown = Shown { data: &data, secret: &secret, tls_ca: trusted.as_deref() };
            match mountpoint {
                None => up(config, &shown, &listen).await,
                Some(mountpoint) => up_mounted(config, &shown, &listen, &mountpoint).await,
            }
        }
        Command::Mount { server, mountpoint, threads, cache_entries, soft_timeout } => {
            let server = with_default_port(&server);
            let soft_timeout = soft_timeout.map(std::time::Duration::from_secs);
            let options = MountOptions { threads, cache_entries, client_stats: cli.client_stats, soft_timeout };
            mount(&server, &mountpoint, options).await
        }
        Command::Race(args) => race::run(args, &cli.server, cli.client_stats).await,
        Command::Bench(args) => {
            // Its threads make blocking calls, and wait on the runtime for the library's.
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || bench::run(args, &cli.server, runtime)).await?
        }
        Command::BenchCompare(args) => bench::compare(args),
        Command::Scale(args) => scale::run(args, &cli.server).await,
        Command::Fsck { data, repair } => fsck(&data, repair),
        command => {
            let client = Client::connect_with(&cli.server, client_config()).await?;
            let result = client_command(&client, command).await;
            if cli.client_stats {
                // Read before the close: the cache empties once the session ends.
                eprintln!("{}", client.stats());
            }
            client.end().await;
            result
        }
    }
}

async fn client_command(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server { .. }
        | Command::Up { .. }
        | Command::Mount { .. }
        | Command::Race(_)
        | Command::Bench(_)
        | Command::BenchCompare(_)
        | Command::Scale(_)
        | Command::Fsck { .. }
        | Command::Sim(_) => {
            unreachable!("handled by run and main")
        }
        Command::Ls { long, path } => ls(client, &path, long).await,
        Command::Stat { paths } => for_each(&paths, |path| stat(client, path)).await,
        Command::Mkdir { parents, paths } => {
            for_each(&paths, |path| async move {
                if parents {
                    client.create_dir_all(path).await?;
                } else {
                    client.mkdir(path, 0o755).await?;
                }
                Ok(())
            })
            .await
        }
        Command::Chmod { mode, paths } => {
            for_each(
                &paths,
                |path| async move { client.set_permissions(path, mode).await.map(drop).map_err(Into::into) },
            )
            .await
        }
        Command::Chown { owner: (uid, gid), paths } => {
            for_each(&paths, |path| async move { client.set_owner(path, uid, gid).await.map(drop).map_err(Into::into) })
                .await
        }
        Command::Put { local, path } => put(client, &local, &path).await,
        Command::Get { path, local } => get(client, &path, &local).await,
        Command::Cat { paths } => for_each(&paths, |path| cat(client, path)).await,
        Command::Rm { recursive, force, paths } => for_each(&paths, |path| rm(client, path, recursive, force)).await,
        Command::Mv { src, dst } => mv(client, &src, &dst).await,
        Command::Admin { command: AdminCommand::Orphans } => orphans(client).await,
    }
}

/// `on` or `off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{text:?} is neither on nor off")),
    }
}

/// The port a server listens on, and clients dial, when an address names none.
const PORT_DEFAULT: u16 = 7070;

/// `host` or `ip` without a port gets `PORT_DEFAULT`: `files.example` is `files.example:7070`,
/// `::1` or `[::1]` is `[::1]:7070`. Anything else is left as it is, for the resolver to judge.
fn with_default_port(address: &str) -> String {
    if address.parse::<SocketAddr>().is_ok() {
        return address.to_string();
    }
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{address}]:{PORT_DEFAULT}");
    }
    if address.starts_with('[') && address.ends_with(']') {
        return format!("{address}:{PORT_DEFAULT}");
    }
    if !address.is_empty() && !address.contains(':') {
        return format!("{address}:{PORT_DEFAULT}");
    }
    address.to_string()
}

/// An octal mode of at most 12 bits.
fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal mode (0 to 7777)")),
    }
}

/// `UID`, `UID:GID` or `:GID`, numeric.
fn parse_owner(text: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let number = |part: &str| part.parse::<u32>().map_err(|_| format!("{part:?} is not a numeric id"));
    let (uid, gid) = match text.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (text, None),
    };
    let uid = if uid.is_empty() { None } else { Some(number(uid)?) };
    let gid = gid.map(number).transpose()?;
    if uid.is_none() && gid.is_none() {
        return Err(format!("{text:?} names no owner and no group"));
    }
    Ok((uid, gid))
}

/// `rustre admin orphans`: a table of the orphans, each with what keeps it alive, then a summary.
async fn orphans(client: &Client) -> anyhow::Result<()> {
    use rustre_client::rustre_proto::{Orphan, OrphanHolder, Timestamp};

    fn plural(count: u64, one: &str, many: &str) -> String {
        format!("{count} {}", if count == 1 { one } else { many })
    }

    /// `1 handle, 2 pins (kernel references)`: the nonzero counts.
    fn counts(handles: u64, pins: u64, and: &str) -> String {
        let mut held = Vec::new();
        if handles > 0 {
            held.push(plural(handles, "handle", "handles"));
        }
        if pins > 0 {
            held.push(plural(pins, "pin (kernel reference)", "pins (kernel references)"));
        }
        held.join(and)
    }

    /// `session 0x100000001 (127.0.0.1:45522 "rustre-client pid 7"): 1 handle`.
    fn holder_line(holder: &OrphanHolder) -> String {
        let mut about = Vec::new();
        if !holder.peer.is_empty() {
            about.push(holder.peer.clone());
        }
        if !holder.client_name.is_empty() {
            about.push(format!("{:?}", holder.client_name));
        }
        let mut about = about.join(" ");
        if !holder.connected {
            about = [about.as_str(), "disconnected, kept for its client to resume"].join("; ");
        }
        let about = about.trim_start_matches("; ");
        let held = counts(holder.handles, holder.pins, ", ");
        match about.is_empty() {
            true => format!("session {:#x}: {held}", holder.session),
            false => format!("session {:#x} ({about}): {held}", holder.session),
        }
    }

    /// What keeps `orphan` alive, one line each.
    fn held_by(orphan: &Orphan) -> Vec<String> {
        let mut lines: Vec<String> = orphan.holders.iter().map(holder_line).collect();
        let shown: u64 = orphan.holders.iter().map(|holder| holder.handles + holder.pins).sum();
        if orphan.opens > shown {
            let more = plural(orphan.opens - shown, "open", "opens");
            lines.push(format!("{more} in flight, or of sessions not listed"));
        }
        if orphan.kept_for_recovery {
            lines.push("kept until the recovery after a restart ends (left by the previous run)".to_string());
        }
        if lines.is_empty() {
            lines.push("nothing (the server's next start destroys it)".to_string());
        }
        lines
    }

    let orphans = client.orphans().await?;
    if orphans.is_empty() {
        return print(|out| writeln!(out, "no orphans"));
    }
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let header = ["INO", "TYPE", "SIZE", "UID", "GID", "CTIME"].map(String::from);
    let rows: Vec<[String; 6]> = orphans
        .iter()
        .map(|Orphan { attr, .. }| {
            [
                attr.ino.to_string(),
                output::kind_name(attr.kind).to_string(),
                attr.size.to_string(),
                attr.uid.to_string(),
                attr.gid.to_string(),
                output::short_date(attr.ctime, now),
            ]
        })
        .collect();
    let widths: [usize; 6] =
        std::array::from_fn(|column| rows.iter().chain([&header]).map(|row| row[column].len()).max().unwrap_or(0));
    // Numbers right-aligned, words left-aligned, as `ls -l` aligns them; the holders follow.
    let cells = |[ino, kind, size, uid, gid, ctime]: &[String; 6]| {
        let [w_ino, w_kind, w_size, w_uid, w_gid, w_ctime] = widths;
        format!("{ino:>w_ino$}  {kind:<w_kind$}  {size:>w_size$}  {uid:>w_uid$}  {gid:>w_gid$}  {ctime:<w_ctime$}  ")
    };
    let indent = " ".repeat(cells(&header).len());
    let (mut handles, mut pins, mut kept, mut sessions) = (0, 0, 0, std::collections::BTreeSet::new());
    for orphan in &orphans {
        handles += orphan.holders.iter().map(|holder| holder.handles).sum::<u64>();
        pins += orphan.holders.iter().map(|holder| holder.pins).sum::<u64>();
        kept += u64::from(orphan.kept_for_recovery);
        sessions.extend(orphan.holders.iter().map(|holder| holder.session));
    }
    // `2 orphans: held by 1 handle and 1 pin (kernel reference) of 2 sessions; 1 kept until ...`.
    let mut summary = Vec::new();
    if handles + pins > 0 {
        let of = plural(sessions.len() as u64, "session", "sessions");
        summary.push(format!("held by {} of {of}", counts(handles, pins, " and ")));
    }
    if kept > 0 {
        summary.push(format!("{kept} kept until the recovery after a restart ends"));
    }
    let count = plural(orphans.len() as u64, "orphan", "orphans");
    let summary = if summary.is_empty() { count } else { format!("{count}: {}", summary.join("; ")) };
    print(|out| {
        writeln!(out, "{}HELD BY", cells(&header))?;
        for (orphan, row) in orphans.iter().zip(&rows) {
            for (index, line) in held_by(orphan).iter().enumerate() {
                let start = if index == 0 { cells(row) } else { indent.clone() };
                writeln!(out, "{start}{line}")?;
            }
        }
        writeln!(out, "{summary}")
    })
}

/// Runs `action` on every path, reporting each failure and going on; fails if any failed.
async fn for_each<'a, F, Fut>(paths: &'a [PathBuf], mut action: F) -> anyhow::Result<()>
where
    F: FnMut(&'a Path) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    for path in paths {
        if let Err(error) = action(path).await {
            if is_broken_pipe(&error) {
                return Err(error);
            }
            eprintln!("rustre: {}", one_line(&error));
            failed = true;
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

// ---- server ----

/// SIGINT and SIGTERM, installed before the server starts so that no signal is missed.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

async fn start_server(config: ServerConfig, listen: &str) -> anyhow::Result<(Server, SocketAddr)> {
    let server = Server::open(config).await?;
    match server.listen(listen).await {
        Ok(address) => Ok((server, address)),
        Err(error) => {
            server.shutdown().await;
            Err(error.into())
        }
    }
}

async fn stop_server(server: Server, signals: &mut StopSignals) {
    let name = signals.wait().await;
    tracing::info!(signal = name, "shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
}

async fn serve(config: ServerConfig, listen: &str) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    // `Server::listen` logs "serving" with the address.
    let (server, _) = start_server(config, listen).await?;
    stop_server(server, &mut signals).await;
    Ok(())
}

/// What `rustre up` shows its user: where the data is and what other clients need.
struct Shown<'a> {
    data: &'a Path,
    secret: &'a Path,
    tls_ca: Option<&'a Path>,
}

impl Shown<'_> {
    /// `rustre is up: serving DIR on ADDR`, and how to attach more clients to `target`.
    fn write_intro(&self, out: &mut Vec<u8>, address: SocketAddr, target: &str) -> std::io::Result<()> {
        let full = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        writeln!(out, "rustre is up: serving {} on {address}", full(self.data).display())?;
        let secret = full(self.secret);
        writeln!(out, "Clients prove the cluster secret in {0}: export RUSTRE_SECRET_FILE={0}", secret.display())?;
        if let Some(ca) = self.tls_ca {
            let ca = full(ca);
            writeln!(out, "The server speaks TLS; clients trust {0}: export RUSTRE_TLS_CA={0}", ca.display())?;
        }
        writeln!(out, "Another mount of it (on this machine, or another with the secret copied there):")?;
        writeln!(out, "  rustre mount {target} /mnt/second")?;
        Ok(())
    }
}

/// Writes to stdout at once (ahead of the log lines that follow).
fn say(out: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out)?;
    stdout.flush()?;
    Ok(())
}

async fn up(config: ServerConfig, shown: &Shown<'_>, listen: &str) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let (server, address) = start_server(config, listen).await?;
    if let Err(error) = demonstrate(shown, address).await {
        server.shutdown().await;
        return Err(error);
    }
    stop_server(server, &mut signals).await;
    Ok(())
}

/// `rustre up MOUNTPOINT`: a server on the data directory, mounted through a client of its own;
/// on a signal, unmounts (lazily if busy), closes the session and stops the server.
async fn up_mounted(config: ServerConfig, shown: &Shown<'_>, listen: &str, mountpoint: &Path) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let (server, address) = start_server(config, listen).await?;
    let target = reachable(address).to_string();
    let mut intro = Vec::new();
    shown.write_intro(&mut intro, address, &target)?;
    say(&intro)?;
    let served = mount_and_serve(&target, mountpoint, MountOptions::default(), &mut signals).await;
    server.shutdown().await;
    tracing::info!("stopped");
    served
}

/// How `rustre mount` (and `rustre up`) run the mount.
struct MountOptions {
    threads: usize,
    cache_entries: usize,
    /// Print the client's counters at the end.
    client_stats: bool,
    /// How long a request waits for an unreachable server before it fails with EIO; `None`:
    /// as long as it takes (`rustre mount --soft-timeout`).
    soft_timeout: Option<std::time::Duration>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: rustre_fuse::THREADS_DEFAULT,
            cache_entries: rustre_client::CACHE_ENTRIES_MAX,
            client_stats: false,
            soft_timeout: None,
        }
    }
}

/// `rustre mount SERVER MOUNTPOINT`.
async fn mount(server: &str, mountpoint: &Path, options: MountOptions) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    mount_and_serve(server, mountpoint, options, &mut signals).await
}

/// Mounts the server at `target` on `mountpoint` and serves the mount until it is unmounted
/// from outside or a signal comes (then unmounts it); the session ends with it.
async fn mount_and_serve(
    target: &str,
    mountpoint: &Path,
    options: MountOptions,
    signals: &mut StopSignals,
) -> anyhow::Result<()> {
    // Made if missing, removed again if this made it, when the mount fails or ends.
    let _mountpoint = mountpoint::Mountpoint::prepare(mountpoint)?;
    let reconnect_wait = options.soft_timeout.unwrap_or(rustre_client::RECONNECT_WAIT_FOREVER);
    let client_config = ClientConfig { cache_entries_max: options.cache_entries, reconnect_wait, ..client_config() };
    let client = Client::connect_with(target, client_config).await?;
    let threads = options.threads;
    let config = rustre_fuse::MountConfig { fsname: format!("rustre@{target}"), threads, ..Default::default() };
    let runtime = tokio::runtime::Handle::current();
    let mountpoint = mountpoint.to_path_buf();
    let mounted = {
        let (client, mountpoint) = (client.clone(), mountpoint.clone());
        // Mounting waits for the kernel's INIT: off the runtime's threads.
        tokio::task::spawn_blocking(move || rustre_fuse::mount(client, runtime, &mountpoint, &config))
    };
    let mounted = match mounted.await? {
        Ok(mounted) => mounted,
        Err(error) => {
            client.end().await;
            return Err(explain_mount_failure(error.into()));
        }
    };
    println!("rustre: {target} mounted on {} (Ctrl-C or umount to stop)", mountpoint.display());
    let unmounter = mounted.unmounter();
    let mut session = tokio::task::spawn_blocking(move || mounted.wait());
    let ended = tokio::select! {
        ended = &mut session => Some(ended),
        name = signals.wait() => {
            tracing::info!(signal = name, "unmounting");
            unmounter.unmount()?;
            None
        }
    };
    let ended = match ended {
        Some(ended) => ended,
        None => session_after_unmount(&mut session, &client, signals).await,
    };
    if options.client_stats {
        eprintln!("{}", client.stats());
    }
    client.end().await;
    ended??;
    Ok(())
}

/// After an unmount the session ends once the kernel lets go of the mount, which the processes
/// of a busy mount (detached lazily) hold up while they wait for an unreachable server, hard and
/// unkillable: they fail with EIO (the client closes) as soon as the server is found unreachable,
/// which may take a few seconds of its silence, or at a second signal.
async fn session_after_unmount(
    session: &mut tokio::task::JoinHandle<Result<(), rustre_fuse::MountError>>,
    client: &Client,
    signals: &mut StopSignals,
) -> Result<Result<(), rustre_fuse::MountError>, tokio::task::JoinError> {
    let close = |why: &str| {
        let waiting = client.outage().map_or(0, |outage| outage.requests_waiting);
        tracing::warn!(waiting, "{why}: failing the requests waiting for the server");
        client.close();
    };
    let mut closed = false;
    loop {
        tokio::select! {
            ended = &mut *session => return ended,
            name = signals.wait(), if !closed => {
                close(&format!("{name} again"));
                closed = true;
            }
            _ = tokio::time::sleep(UNMOUNT_CHECK_INTERVAL), if !closed => {
                if client.outage().is_some() {
                    close("the server is unreachable");
                    closed = true;
                }
            }
        }
    }
}

/// How often a stopping mount checks whether its server is unreachable.
const UNMOUNT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// A mount refused for want of privilege says what it needs.
fn explain_mount_failure(error: anyhow::Error) -> anyhow::Error {
    let denied = error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if denied && !rustix::process::geteuid().is_root() {
        return error.context("mounting needs root (this uses /dev/fuse and mount(2) directly, without fusermount)");
    }
    error
}

/// Where a client reaches a server listening on `address` (a wildcard address means this host).
fn reachable(address: SocketAddr) -> SocketAddr {
    let mut reachable = address;
    if address.ip().is_unspecified() {
        reachable.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    reachable
}

/// Shows the server working through a real client, without changing anything in it.
async fn demonstrate(shown: &Shown<'_>, address: SocketAddr) -> anyhow::Result<()> {
    let target = reachable(address).to_string();
    let client = Client::connect_with(&target, client_config()).await?;
    let result = demonstrate_with(&client, shown, address, &target).await;
    client.end().await;
    result
}

async fn demonstrate_with(client: &Client, shown: &Shown<'_>, address: SocketAddr, target: &str) -> anyhow::Result<()> {
    let statfs = client.statfs().await?;
    let mut entries = client.read_dir_plus("/").await?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));

    let mut out = Vec::new();
    shown.write_intro(&mut out, address, target)?;
    writeln!(
        out,
        "connected a client to {target}: server {:?}, session {:#x}",
        client.server_name(),
        client.session()
    )?;
    writeln!(
        out,
        "statfs: block size {}, blocks {} (free {}, available {}), files {} (free {})",
        statfs.block_size, statfs.blocks, statfs.blocks_free, statfs.blocks_available, statfs.files, statfs.files_free
    )?;
    match entries.len() {
        0 => writeln!(out, "/ is empty")?,
        1 => writeln!(out, "/ holds 1 entry:")?,
        count => writeln!(out, "/ holds {count} entries:")?,
    }
    let rows = long_rows(client, &entries).await?;
    write_long(&mut out, &rows, "  ")?;
    writeln!(out)?;
    writeln!(out, "Use it from another terminal, for example:")?;
    for example in
        ["ls -l /", "mkdir -p /docs", "put ./notes.txt /docs", "cat /docs/notes.txt", "get /docs/notes.txt ./copy.txt"]
    {
        writeln!(out, "  rustre --server {target} {example}")?;
    }
    writeln!(out, "(or export RUSTRE_SERVER={target})")?;
    writeln!(out, "Press Ctrl-C to stop the server.")?;
    say(&out)
}

// ---- client commands ----

async fn long_row(client: &Client, attr: Attr, name: Vec<u8>) -> anyhow::Result<LongRow> {
    let target = if attr.kind == FileKind::Symlink { Some(client.readlink_ino(attr.ino).await?) } else { None };
    Ok(LongRow { attr, name, target })
}

async fn long_rows(client: &Client, entries: &[Entry]) -> anyhow::Result<Vec<LongRow>> {
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let attr = match &entry.attr {
            Some(attr) => attr.clone(),
            None => client.getattr(entry.ino).await?,
        };
        rows.push(long_row(client, attr, entry.name.clone()).await?);
    }
    Ok(rows)
}

async fn ls(client: &Client, path: &Path, long: bool) -> anyhow::Result<()> {
    // As ls: a symlink named on the command line is listed itself in long format, followed
    // otherwise.
    let attr = if long { client.lstat(path).await? } else { client.stat(path).await? };
    if attr.kind != FileKind::Directory {
        if long {
            let row = long_row(client, attr, path.as_os_str().as_bytes().to_vec()).await?;
            return print(|out| write_long(out, &[row], ""));
        }
        return print(|out| {
            out.write_all(path.as_os_str().as_bytes())?;
            out.write_all(b"\n")
        });
    }
    let mut entries = if long { client.read_dir_plus(path).await? } else { client.read_dir(path).await? };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if long {
        let rows = long_rows(client, &entries).await?;
        print(|out| write_long(out, &rows, ""))
    } else {
        print(|out| {
            for entry in &entries {
                out.write_all(&entry.name)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        })
    }
}

/// Writes to stdout through a buffer and flushes it.
fn print(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write(&mut out)?;
    out.flush()?;
    Ok(())
}

async fn stat(client: &Client, path: &Path) -> anyhow::Result<()> {
    let attr = client.stat(path).await?;
    print(|out| output::write_stat(out, &path.display().to_string(), &attr))
}

/// The last component of `path`, for "into that directory" targets.
fn basename<'a>(path: &'a Path, verb: &str) -> anyhow::Result<&'a OsStr> {
    match path.file_name() {
        Some(name) => Ok(name),
        None => bail!("{verb} {}: the path names no file", path.display()),
    }
}

/// Is `path` an existing directory in rustre (following symlinks)?
async fn is_dir(client: &Client, path: &Path) -> bool {
    matches!(client.stat(path).await, Ok(attr) if attr.kind == FileKind::Directory)
}

/// Fills `buffer` from `reader` as far as the data lasts; returns how much it holds.
async fn read_chunk(reader: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).await? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

async fn put(client: &Client, local: &Path, path: &Path) -> anyhow::Result<()> {
    let mut source = tokio::fs::File::open(local).await.with_context(|| format!("put: opening {}", local.display()))?;
    let metadata = source.metadata().await.with_context(|| format!("put: {}", local.display()))?;
    if metadata.is_dir() {
        bail!("put: {}: {}", local.display(), Errno::EISDIR);
    }
    let target = if is_dir(client, path).await {
        path.join(basename(local, "put")?)
    } else if path.as_os_str().as_bytes().ends_with(b"/") {
        // As cp: "DIR/" promises a directory (the library would ignore the slash and create DIR):
        // ENOTDIR where the name is something else or could be made, ENOENT where a directory
        // on the way is missing.
        let errno = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => match client.stat(parent).await {
                Err(error) if error.errno == Errno::ENOENT => Errno::ENOENT,
                _ => Errno::ENOTDIR,
            },
            _ => Errno::ENOTDIR,
        };
        bail!("put {}: {}", path.display(), errno);
    } else {
        path.to_path_buf()
    };
    let options =
        OpenOptions::new().write(true).create(true).truncate(true).mode(metadata.permissions().mode() & 0o777).clone();
    let mut file = client.open(&target, &options).await?;
    let mut buffer = vec![0; CHUNK];
    let copied = async {
        loop {
            let read = read_chunk(&mut source, &mut buffer)
                .await
                .with_context(|| format!("put: reading {}", local.display()))?;
            if read == 0 {
                return anyhow::Ok(());
            }
            file.write_all(&buffer[..read]).await.with_context(|| format!("put: writing {}", target.display()))?;
        }
    }
    .await;
    let closed = file.close().await;
    copied?;
    closed.with_context(|| format!("put: closing {}", target.display()))?;
    Ok(())
}

/// Opens a rustre file for reading, refusing directories.
async fn open_for_reading(client: &Client, path: &Path, verb: &str) -> anyhow::Result<rustre_client::File> {
    let file = client.open(path, OpenOptions::new().read(true)).await?;
    if file.cached_attr().kind == FileKind::Directory {
        let _ = file.close().await;
        bail!("{verb} {}: {}", path.display(), Errno::EISDIR);
    }
    Ok(file)
}

/// Streams the file in chunks to `sink`.
async fn copy_out<F>(file: &rustre_client::File, path: &Path, verb: &str, mut sink: F) -> anyhow::Result<()>
where
    F: AsyncFnMut(&[u8]) -> anyhow::Result<()>,
{
    let mut offset = 0;
    loop {
        let data =
            file.read_at(offset, CHUNK).await.map_err(|error| error.context(format!("{verb} {}", path.display())))?;
        if data.is_empty() {
            return Ok(());
        }
        offset += data.len() as u64;
        sink(&data).await?;
    }
}

async fn get(client: &Client, path: &Path, local: &Path) -> anyhow::Result<()> {
    let file = open_for_reading(client, path, "get").await?;
    let target = if local.is_dir() { local.join(basename(path, "get")?) } else { local.to_path_buf() };
    let copied = async {
        let mut out =
            tokio::fs::File::create(&target).await.with_context(|| format!("get: creating {}", target.display()))?;
        let context = || format!("get: writing {}", target.display());
        copy_out(&file, path, "get", async |data: &[u8]| out.write_all(data).await.with_context(context)).await?;
        out.flush().await.with_context(context)
    }
    .await;
    let closed = file.close().await;
    copied?;
    closed?;
    Ok(())
}

async fn cat(client: &Client, path: &Path) -> anyhow::Result<()> {
    let file = open_for_reading(client, path, "cat").await?;
    let copied = copy_out(&file, path, "cat", async |data: &[u8]| {
        let mut stdout = std::io::stdout();
        stdout.write_all(data)?;
        stdout.flush()?;
        Ok(())
    })
    .await;
    let closed = file.close().await;
    copied?;
    closed?;
    Ok(())
}

async fn rm(client: &Client, path: &Path, recursive: bool, force: bool) -> anyhow::Result<()> {
    let result = async {
        if recursive {
            return client.remove_all(path).await;
        }
        let attr = client.lstat(path).await?;
        if attr.kind == FileKind::Directory {
            return Err(rustre_client::Error::from(Errno::EISDIR).context(format!("rm {}", path.display())));
        }
        client.remove_file(path).await
    }
    .await;
    match result {
        Err(error) if force && error.errno == Errno::ENOENT => Ok(()),
        other => Ok(other?),
    }
}

async fn mv(client: &Client, src: &Path, dst: &Path) -> anyhow::Result<()> {
    let target = if is_dir(client, dst).await { dst.join(basename(src, "mv")?) } else { dst.to_path_buf() };
    client.rename(src, &target).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_gets_the_default_one() {
        assert_eq!(with_default_port("127.0.0.1"), "127.0.0.1:7070");
        assert_eq!(with_default_port("files.example"), "files.example:7070");
        assert_eq!(with_default_port("::1"), "[::1]:7070");
        assert_eq!(with_default_port("[::1]"), "[::1]:7070");
        assert_eq!(with_default_port("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(with_default_port("[::1]:8080"), "[::1]:8080");
        assert_eq!(with_default_port("files.example:8080"), "files.example:8080");
    }

    #[test]
    fn on_and_off_are_what_the_help_says() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert_eq!(parse_on_off("true"), Ok(true));
        assert!(parse_on_off("maybe").is_err());
    }

    #[test]
    fn a_cause_said_by_its_parent_is_said_once() {
        /// Prints its source and also gives it as its source, as many errors do.
        #[derive(Debug)]
        struct Twice(std::io::Error);
        impl std::fmt::Display for Twice {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "binding: {}", self.0)
            }
        }
        impl std::error::Error for Twice {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let error = anyhow::Error::new(Twice(io)).context("listening on 127.0.0.1:7070");
        assert_eq!(one_line(&error), "listening on 127.0.0.1:7070: binding: address in use");
    }
}
