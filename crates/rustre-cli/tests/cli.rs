//! The `rustre` binary end to end: client commands against a real server started in the test
//! process, and the `server` and `up` commands run as processes of their own.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use rustre_client::Client;
use rustre_server::{Server, ServerConfig};

const RUSTRE: &str = env!("CARGO_BIN_EXE_rustre");

#[path = "common/secret.rs"]
mod secret;
use secret::{test_secret, test_secret_file};

/// A command line for the binary, free of the caller's environment settings, with the tests'
/// cluster secret.
fn rustre_command() -> Command {
    let mut command = Command::new(RUSTRE);
    command.env_remove("RUSTRE_SERVER").env_remove("RUSTRE_DATA").env_remove("RUST_LOG");
    command.env("RUSTRE_SECRET_FILE", test_secret_file());
    // The tests run as root and act as root: squashed, root could write nowhere.
    command.env("RUSTRE_ROOT_SQUASH", "off");
    command
}

/// A library client of the server at `address`, with the tests' cluster secret.
async fn connect(address: &str) -> Client {
    let config = rustre_client::ClientConfig { secret: Some(test_secret()), ..Default::default() };
    Client::connect_with(address, config).await.expect("client connects")
}

/// A real server on a free loopback port, in this process, with a temporary data directory.
struct TestServer {
    runtime: tokio::runtime::Runtime,
    server: Option<Server>,
    address: String,
    _data: tempfile::TempDir,
}

impl TestServer {
    fn start() -> TestServer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let data = tempfile::tempdir().expect("temporary data directory");
        let (server, address) = runtime.block_on(async {
            let mut config = ServerConfig::new(data.path());
            config.secret = Some(test_secret());
            config.root_squash = rustre_server::RootSquash::Off;
            let server = Server::open(config).await.expect("server opens");
            let address = server.listen("127.0.0.1:0").await.expect("server listens");
            (server, address.to_string())
        });
        TestServer { runtime, server: Some(server), address, _data: data }
    }

    /// Runs `rustre --server ADDR args...`.
    fn run(&self, args: &[&str]) -> Output {
        rustre_command().arg("--server").arg(&self.address).args(args).output().expect("rustre runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok_bytes(args)).expect("utf-8 output")
    }

    #[track_caller]
    fn ok_bytes(&self, args: &[&str]) -> Vec<u8> {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "rustre {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Runs a command that must fail with status 1 and one line on stderr; returns that line.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "rustre {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
        assert!(stderr.starts_with("rustre: "), "error line: {stderr:?}");
        stderr
    }

    /// Runs `action` with a library client of this server.
    fn with_client<T>(&self, action: impl AsyncFnOnce(&Client) -> T) -> T {
        self.runtime.block_on(async {
            let client = connect(&self.address).await;
            let result = action(&client).await;
            client.close();
            result
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

/// Bytes that differ all along (a xorshift sequence), so misplaced chunks show.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn lines(output: &str) -> Vec<&str> {
    output.lines().collect()
}

/// A number of a `rustre stat` block (coreutils' layout): `Size`, `Uid` or `Gid`.
fn stat_number(output: &str, key: &str) -> String {
    let marker = format!("{key}: ");
    let at = output.find(&marker).unwrap_or_else(|| panic!("no {key} in {output}")) + marker.len();
    let value = output[at..].trim_start_matches(['(', ' ']);
    value.split(|c: char| !c.is_ascii_digit()).next().unwrap().to_string()
}

#[test]
fn mkdir_makes_directories_and_parents() {
    let server = TestServer::start();
    server.ok(&["mkdir", "-p", "/a/b/c"]);
    server.ok(&["mkdir", "-p", "/a/b"]); // existing is fine with -p
    server.ok(&["mkdir", "/a/d", "/e"]);
    assert_eq!(lines(&server.ok(&["ls", "/"])), ["a", "e"]);
    assert_eq!(lines(&server.ok(&["ls", "/a"])), ["b", "d"]);
    assert_eq!(lines(&server.ok(&["ls", "/a/b"])), ["c"]);

    let error = server.fails(&["mkdir", "/a/b"]);
    assert!(error.contains("EEXIST"), "{error}");
    let error = server.fails(&["mkdir", "/x/y"]);
    assert!(error.contains("ENOENT"), "{error}");
    // One failing path does not stop the others.
    let output = server.run(&["mkdir", "/a/b", "/f"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(lines(&server.ok(&["ls", "/"])), ["a", "e", "f"]);
}

// chmod and chown, as an administrator hands directories over to users.
#[test]
fn chmod_and_chown_hand_directories_over() {
    let server = TestServer::start();
    server.ok(&["mkdir", "/home", "/tmp"]);
    server.ok(&["chmod", "1777", "/tmp"]);
    server.ok(&["chown", "1000:50", "/home"]);
    server.ok(&["chown", ":60", "/tmp"]);
    let home = server.ok(&["stat", "/home"]);
    assert_eq!((stat_number(&home, "Uid"), stat_number(&home, "Gid")), ("1000".into(), "50".into()), "{home}");
    let tmp = server.ok(&["stat", "/tmp"]);
    assert!(tmp.contains("1777"), "{tmp}");
    assert_eq!(stat_number(&tmp, "Gid"), "60");
    let bad = server.run(&["chmod", "8", "/tmp"]);
    assert_eq!(bad.status.code(), Some(2), "a bad mode is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("octal"), "{bad:?}");
    let error = server.fails(&["chmod", "755", "/missing"]);
    assert!(error.contains("ENOENT"), "{error}");
}

#[test]
fn put_get_and_cat_round_trip_a_large_file() {
    let server = TestServer::start();
    let local = tempfile::tempdir().unwrap();
    let contents = pattern(3 * (1 << 20) + 12345);
    let source = local.path().join("blob.bin");
    std::fs::write(&source, &contents).unwrap();

    server.ok(&["mkdir", "/data"]);
    server.ok(&["put", source.to_str().unwrap(), "/data/copy.bin"]);
    // Into an existing directory: under the local file's name.
    server.ok(&["put", source.to_str().unwrap(), "/data"]);
    assert_eq!(lines(&server.ok(&["ls", "/data"])), ["blob.bin", "copy.bin"]);

    let back = local.path().join("back.bin");
    server.ok(&["get", "/data/copy.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == contents, "get returned other bytes");
    // Into an existing local directory: under the rustre file's name.
    let out_dir = local.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    server.ok(&["get", "/data/blob.bin", out_dir.to_str().unwrap()]);
    assert!(std::fs::read(out_dir.join("blob.bin")).unwrap() == contents);

    assert!(server.ok_bytes(&["cat", "/data/blob.bin"]) == contents, "cat returned other bytes");
    let stat = server.ok(&["stat", "/data/copy.bin"]);
    assert_eq!(stat_number(&stat, "Size"), contents.len().to_string());

    // put replaces (truncates) an existing file.
    let small = local.path().join("small");
    std::fs::write(&small, b"short").unwrap();
    server.ok(&["put", small.to_str().unwrap(), "/data/copy.bin"]);
    assert_eq!(server.ok(&["cat", "/data/copy.bin"]), "short");
}

#[test]
fn cat_concatenates_and_refuses_directories() {
    let server = TestServer::start();
    server.with_client(async |client| {
        client.create_dir_all("/d").await.unwrap();
        client.write("/d/one", b"first\n").await.unwrap();
        client.write("/d/two", b"second\n").await.unwrap();
        client.write("/d/empty", b"").await.unwrap();
    });
    assert_eq!(server.ok(&["cat", "/d/one", "/d/empty", "/d/two"]), "first\nsecond\n");

    let output = server.run(&["cat", "/d", "/d/two"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(output.stdout, b"second\n", "cat goes on after a failing path");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("/d") && stderr.contains("EISDIR"), "{stderr}");
}

#[test]
fn ls_long_and_stat_show_attributes() {
    let server = TestServer::start();
    server.with_client(async |client| {
        client.create_dir_all("/dir/sub").await.unwrap();
        client.write("/dir/hello.txt", b"hello").await.unwrap();
        client.symlink("hello.txt", "/dir/link").await.unwrap();
    });

    assert_eq!(lines(&server.ok(&["ls", "/dir"])), ["hello.txt", "link", "sub"]);
    // As coreutils' ls -l: permissions as letters, owner and group by name where this machine
    // knows them (root is 0 here), a local date, the name.
    let long = server.ok(&["ls", "-l", "/dir"]);
    let long = lines(&long);
    assert_eq!(long.len(), 3, "{long:?}");
    let columns: Vec<&str> = long[0].split_whitespace().collect();
    assert_eq!(columns.len(), 9, "{long:?}");
    assert_eq!(columns[0], "-rw-r--r--");
    assert_eq!(columns[1], "1"); // nlink
    assert_eq!(columns[2..4], ["root", "root"]);
    assert_eq!(columns[4], "5"); // size
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    assert!(months.contains(&columns[5]), "month: {}", columns[5]);
    assert!(columns[6].parse::<u8>().is_ok_and(|day| (1..=31).contains(&day)), "day: {}", columns[6]);
    assert!(columns[7].len() == 5 && columns[7].as_bytes()[2] == b':', "a time of day this year: {}", columns[7]);
    assert_eq!(columns[8], "hello.txt");
    assert!(long[1].starts_with("lrwxrwxrwx ") && long[1].ends_with(" link -> hello.txt"), "{}", long[1]);
    assert!(long[2].starts_with("drwxr-xr-x 2 root root ") && long[2].ends_with(" sub"), "{}", long[2]);

    // A non-directory is shown itself, as ls does.
    assert_eq!(server.ok(&["ls", "/dir/hello.txt"]), "/dir/hello.txt\n");
    let single = server.ok(&["ls", "-l", "/dir/hello.txt"]);
    assert!(single.starts_with("-rw-r--r-- 1 root root 5 ") && single.ends_with(" /dir/hello.txt\n"), "{single}");
    let link = server.ok(&["ls", "-l", "/dir/link"]);
    assert!(link.ends_with(" /dir/link -> hello.txt\n"), "{link}");

    // As coreutils' stat.
    let expected_ino = server.with_client(async |client| client.stat("/dir/hello.txt").await.unwrap().ino);
    let stat = server.ok(&["stat", "/dir/hello.txt"]);
    let stat = lines(&stat);
    assert_eq!(stat[0], "  File: /dir/hello.txt");
    let words = |line: &str| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words(stat[1]), ["Size:", "5", "Blocks:", "1", "IO", "Block:", "4096", "regular", "file"], "{stat:?}");
    assert_eq!(words(stat[2])[..4], ["Inode:", &expected_ino.to_string(), "Links:", "1"], "{stat:?}");
    assert_eq!(
        words(stat[3]),
        ["Access:", "(0644/-rw-r--r--)", "Uid:", "(", "0/", "root)", "Gid:", "(", "0/", "root)"]
    );
    for (line, label) in stat[4..7].iter().zip(["Access: ", "Modify: ", "Change: "]) {
        // `2026-12-07 12:55:01.123456789 +0000`
        let date = line.strip_prefix(label).unwrap_or_else(|| panic!("{label}: {stat:?}"));
        let parts: Vec<&str> = date.split(' ').collect();
        assert_eq!(parts.len(), 3, "{date}");
        assert_eq!(parts[0].len(), 10, "{date}");
        assert_eq!(parts[1].len(), 18, "seconds to the nanosecond: {date}");
        assert!(parts[2].starts_with('+') || parts[2].starts_with('-'), "{date}");
    }

    let stat = server.ok(&["stat", "/dir/sub"]);
    assert!(stat.lines().nth(1).unwrap().ends_with(" directory"), "{stat}");
    assert!(stat.contains("(0755/drwxr-xr-x)"), "{stat}");
    // stat follows symlinks.
    let stat = server.ok(&["stat", "/dir/link"]);
    assert!(stat.lines().nth(1).unwrap().ends_with(" regular file"), "{stat}");
    assert!(stat.contains(&format!("Inode: {expected_ino} ")), "{stat}");
}

// `stat` takes several paths on one client, and `--client-stats` shows what that client did: the
// second stat of the same file is answered from the cache under the leases the first lookup got.
#[test]
fn stat_of_several_paths_shares_the_client_cache() {
    let server = TestServer::start();
    server.with_client(async |client| client.write("/x", b"contents").await.unwrap());

    let output = server.run(&["--client-stats", "stat", "/x", "/x"]);
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert!(output.status.success(), "rustre stat failed ({}): {stderr}", output.status);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let paths: Vec<&str> = stdout.lines().filter(|line| line.starts_with("  File: ")).collect();
    assert_eq!(paths, ["  File: /x", "  File: /x"], "{stdout}");

    let stat_line = |key: &str| {
        let prefix = format!("{key}: ");
        let line = stderr.lines().find(|line| line.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {key:?} in {stderr:?}"))[prefix.len()..].to_string()
    };
    let hits: u64 = stat_line("cache hits").parse().expect("a count");
    assert!(hits >= 1, "the second stat came from the cache: {stderr}");
    // The per-kind counts are indented under "requests sent": one lookup, for the first stat.
    assert!(stderr.lines().any(|line| line == "  lookup: 1"), "{stderr}");
    assert!(!stderr.lines().any(|line| line.starts_with("  getattr: ")), "{stderr}");
}

#[test]
fn mv_renames_and_moves_into_directories() {
    let server = TestServer::start();
    server.with_client(async |client| {
        client.create_dir_all("/src").await.unwrap();
        client.create_dir_all("/target").await.unwrap();
        client.write("/src/file", b"contents").await.unwrap();
    });
    server.ok(&["mv", "/src/file", "/src/renamed"]);
    assert_eq!(lines(&server.ok(&["ls", "/src"])), ["renamed"]);

    server.ok(&["mv", "/src/renamed", "/target"]);
    assert_eq!(server.ok(&["ls", "/src"]), "");
    assert_eq!(server.ok(&["cat", "/target/renamed"]), "contents");

    // A directory moves into another directory the same way.
    server.ok(&["mv", "/src", "/target"]);
    assert_eq!(lines(&server.ok(&["ls", "/"])), ["target"]);
    assert_eq!(lines(&server.ok(&["ls", "/target"])), ["renamed", "src"]);

    let error = server.fails(&["mv", "/missing", "/target/x"]);
    assert!(error.contains("ENOENT"), "{error}");
}

#[test]
fn rm_removes_files_and_trees_only_when_asked() {
    let server = TestServer::start();
    server.ok(&["mkdir", "-p", "/tree/a/b", "/tree/c"]);
    server.with_client(async |client| {
        client.write("/tree/a/b/deep", b"x").await.unwrap();
        client.write("/tree/top", b"y").await.unwrap();
        client.write("/lone", b"z").await.unwrap();
    });

    let error = server.fails(&["rm", "/tree"]);
    assert!(error.contains("is a directory") && error.contains("EISDIR"), "{error}");
    assert_eq!(lines(&server.ok(&["ls", "/"])), ["lone", "tree"]);

    server.ok(&["rm", "/lone"]);
    server.ok(&["rm", "-r", "/tree"]);
    assert_eq!(server.ok(&["ls", "/"]), "");

    let error = server.fails(&["rm", "/lone"]);
    assert!(error.contains("ENOENT"), "{error}");
    server.ok(&["rm", "-f", "/lone"]);
}

#[test]
fn errors_exit_1_with_one_line() {
    let server = TestServer::start();
    let error = server.fails(&["stat", "/missing"]);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("stat /missing") && error.contains("ENOENT"), "{error}");

    let local = tempfile::tempdir().unwrap();
    let missing = local.path().join("missing");
    let error = server.fails(&["put", missing.to_str().unwrap(), "/x"]);
    assert!(error.contains("missing"), "{error}");
    let present = local.path().join("present");
    std::fs::write(&present, b"x").unwrap();
    let error = server.fails(&["put", present.to_str().unwrap(), "/nodir/"]);
    assert!(error.contains("ENOTDIR"), "{error}");
    // As cp: a directory on the way that is missing is ENOENT.
    let error = server.fails(&["put", present.to_str().unwrap(), "/no/such/dir/"]);
    assert!(error.contains("ENOENT"), "{error}");
    assert_eq!(server.ok(&["ls", "/"]), "", "put to a missing DIR/ created nothing");
    let error = server.fails(&["get", "/missing", missing.to_str().unwrap()]);
    assert!(error.contains("ENOENT"), "{error}");
    assert!(!missing.exists(), "a failed get leaves no local file");

    // No server at all.
    let closed = free_address();
    let output = rustre_command().args(["--server", &closed, "ls", "/"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&format!("connecting to {closed}")), "{stderr}");
}

#[test]
fn server_address_comes_from_the_environment() {
    let server = TestServer::start();
    server.ok(&["mkdir", "/from-env"]);
    let output = rustre_command().env("RUSTRE_SERVER", &server.address).args(["ls", "/"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, b"from-env\n");
}

// ---- the server itself, as a process ----

/// A loopback address with a port that was free a moment ago.
fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().to_string()
}

/// A `rustre` process, killed when dropped (so also when a test fails), its output in files.
struct Process {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    fn spawn(args: &[&str], logs: &Path, name: &str) -> Process {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = rustre_command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("rustre starts");
        Process { child, stdout, stderr }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) until `ready` holds, failing early if the process ends.
    #[track_caller]
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("rustre exited ({status}) before {what}; stderr: {}", self.stderr());
            }
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("timed out waiting for {what}; stderr: {}", self.stderr());
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    #[track_caller]
    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("rustre did not exit after SIGTERM; stderr: {}", self.stderr());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Does a server listen on `address`? Not a connection to itself (see `common::accepts`).
fn accepts(address: &str) -> bool {
    std::net::TcpStream::connect(address).is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok())
}

#[test]
fn second_server_on_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let address = free_address();
    let mut first = Process::spawn(&["server", "--data", data, "--listen", &address], dir.path(), "first");
    first.wait_until("the server accepts connections", || accepts(&address));

    let second = rustre_command().args(["server", "--data", data, "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!second.status.success(), "a second server started on a locked data directory");
    let stderr = String::from_utf8(second.stderr).unwrap();
    let error = stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("rustre: ") && error.contains("in use"), "{stderr}");
    assert!(error.contains(&format!("pid {}", first.child.id())), "{stderr}");

    let status = first.terminate();
    assert!(status.success(), "server exit {status}; stderr: {}", first.stderr());
    assert!(first.stderr().contains("serving"), "{}", first.stderr());
}

#[test]
fn up_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_address();
    let mut up = Process::spawn(&["up", "--data", data.to_str().unwrap(), "--listen", &address], dir.path(), "up");
    let mut listing = None;
    up.wait_until("the CLI can list /", || {
        let output = rustre_command().args(["--server", &address, "ls", "/"]).output().unwrap();
        if output.status.success() {
            listing = Some(output.stdout);
        }
        listing.is_some()
    });
    assert_eq!(listing.unwrap(), b"", "the demonstration created nothing");
    // The demonstration is printed once the client is done with it.
    let stdout = up.stdout.clone();
    up.wait_until("the usage hints", || up_printed(&stdout));

    let status = up.terminate();
    assert!(status.success(), "up exit {status}; stderr: {}", up.stderr());
    let stdout = up.stdout();
    assert!(stdout.contains("statfs: "), "{stdout}");
    assert!(stdout.contains(&format!("rustre --server {address} ls")), "{stdout}");
    assert!(data.is_dir(), "the data directory was made");
}

// `rustre server` makes DATA/secret (owner-only) on its first start and keeps it; a client
// proves it with `--secret-file` or RUSTRE_SECRET_FILE, and one without it, or with another
// secret, is refused with a message that says so; the server logs why.
#[test]
fn clients_must_prove_the_secret_the_server_made() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_address();
    let args = ["server", "--data", data.to_str().unwrap(), "--listen", &address];
    let spawn = |name: &str| {
        let mut command = rustre_command();
        command.env_remove("RUSTRE_SECRET_FILE");
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join(format!("{name}.stdout"))).unwrap())
            .stderr(File::create(dir.path().join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("rustre starts");
        Process {
            child,
            stdout: dir.path().join(format!("{name}.stdout")),
            stderr: dir.path().join(format!("{name}.stderr")),
        }
    };
    let mut server = spawn("server");
    server.wait_until("the server accepts connections", || accepts(&address));
    let secret = data.join("secret");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let made = std::fs::read_to_string(&secret).unwrap();

    let ls = |secret: Option<&Path>| {
        let mut command = rustre_command();
        command.env_remove("RUSTRE_SECRET_FILE").args(["--server", &address]);
        if let Some(secret) = secret {
            command.arg("--secret-file").arg(secret);
        }
        command.args(["ls", "/"]).output().unwrap()
    };
    let listed = ls(Some(&secret));
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let bare = ls(None);
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("asks for the cluster secret"), "{bare:?}");
    let wrong = ls(Some(test_secret_file()));
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("authentication failed"), "{wrong:?}");
    assert!(server.stderr().contains("authentication failed"), "the server logs why: {}", server.stderr());

    assert!(server.terminate().success());
    let mut again = spawn("again");
    again.wait_until("the restarted server accepts connections", || accepts(&address));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), made, "the secret is kept across restarts");
    assert!(ls(Some(&secret)).status.success());
    assert!(again.terminate().success());
}

fn up_printed(stdout: &Path) -> bool {
    std::fs::read_to_string(stdout).is_ok_and(|out| out.contains("Ctrl-C"))
}

// `rustre admin orphans` lists a file that is unlinked while a client holds it open, with what
// holds it (that client's session, its address and its one handle), and no longer lists it once
// that client closes it.
#[test]
fn admin_orphans_lists_unlinked_open_files_and_their_holders() {
    let server = TestServer::start();
    let (client, file) = server.runtime.block_on(async {
        let client = connect(&server.address).await;
        let file = client.create("/doomed").await.unwrap();
        client.remove_file("/doomed").await.unwrap();
        (client, file)
    });
    let listed = server.ok(&["admin", "orphans"]);
    let mut lines = listed.lines();
    let header = lines.next().unwrap();
    assert!(header.split_whitespace().eq(["INO", "TYPE", "SIZE", "UID", "GID", "CTIME", "HELD", "BY"]), "{listed}");
    let row = lines.next().unwrap();
    let ino = file.ino().to_string();
    let words: Vec<&str> = row.split_whitespace().take(6).collect();
    assert_eq!(words, [ino.as_str(), "regular", "file", "0", "0", "0"], "ino, type, size, uid, gid: {listed}");
    let holder = format!("session {:#x} (127.0.0.1:", client.session());
    assert!(row.contains(&holder), "the holder's session and address: {listed}");
    let name_and_count = format!(" \"rustre-client pid {}\"): 1 handle", std::process::id());
    assert!(row.ends_with(&name_and_count), "the client's name and what it holds: {listed}");
    assert_eq!(lines.next(), Some("1 orphan: held by 1 handle of 1 session"), "{listed}");
    assert_eq!(lines.next(), None, "{listed}");
    server.runtime.block_on(async {
        file.close().await.unwrap();
        client.close();
    });
    assert_eq!(server.ok(&["admin", "orphans"]), "no orphans\n");
}

// `rustre server` squashes a client's root to nobody unless told not to: root on a client may
// then create nothing in the root directory, which is root's.
#[test]
fn the_server_squashes_root_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_address();
    let mut command = rustre_command();
    command.env_remove("RUSTRE_ROOT_SQUASH").args(["server", "--data", data.to_str().unwrap(), "--listen", &address]);
    let logs = |name: &str| File::create(dir.path().join(name)).unwrap();
    let child = command.stdout(logs("server.stdout")).stderr(logs("server.stderr")).spawn().expect("rustre starts");
    let mut server =
        Process { child, stdout: dir.path().join("server.stdout"), stderr: dir.path().join("server.stderr") };
    server.wait_until("the server accepts connections", || accepts(&address));
    let mkdir = rustre_command().args(["--server", &address, "mkdir", "/d"]).output().unwrap();
    assert!(!mkdir.status.success(), "root was not squashed");
    assert!(String::from_utf8_lossy(&mkdir.stderr).contains("permission denied (EACCES)"), "{mkdir:?}");
    assert!(server.terminate().success());
}

// `rustre server --tls` makes a cluster CA and its certificate on its first start; clients that
// trust the CA (`--tls-ca`) work, a plain client is refused.
#[test]
fn tls_with_certificates_the_server_made() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_address();
    let args = ["server", "--data", data.to_str().unwrap(), "--listen", &address, "--tls"];
    let mut server = Process::spawn(&args, dir.path(), "server");
    server.wait_until("the server accepts connections", || accepts(&address));
    let ca = data.join("tls/ca.pem");
    assert_eq!(std::fs::metadata(data.join("tls/key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    let client = |tls: bool, args: &[&str]| {
        let mut command = rustre_command();
        command.args(["--server", &address]);
        if tls {
            command.arg("--tls-ca").arg(&ca);
        }
        command.args(args).output().unwrap()
    };
    let made = client(true, &["mkdir", "/over-tls"]);
    assert!(made.status.success(), "{made:?}");
    let listed = client(true, &["ls", "/"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("over-tls"), "{listed:?}");
    let plain = client(false, &["ls", "/"]);
    assert!(!plain.status.success(), "a plain client got in: {plain:?}");
    assert!(String::from_utf8_lossy(&plain.stderr).contains("--tls-ca"), "the error says what to do: {plain:?}");
    assert!(server.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("server.stderr")).unwrap();
    assert!(log.contains("TLS handshake failed"), "{log}");

    // The other way round: a TLS client of a plain server is told what may be wrong.
    let plain = TestServer::start();
    let output = rustre_command().args(["--server", &plain.address, "--tls-ca"]).arg(&ca).args(["ls", "/"]).output();
    let output = output.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is the server running with --tls?"), "{stderr}");
}

/// What a new user meets first says what is wrong, once, in the terms of what they did.
#[test]
fn messages_say_what_is_wrong_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = rustre_command().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?} should fail: {output:?}");
        String::from_utf8(output.stderr).unwrap()
    };

    // A port in use: the cause once, after what was being done.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let stderr = run(&["server", "--data", data.to_str().unwrap(), "--listen", &address]);
    let error = stderr.lines().last().unwrap();
    assert_eq!(error.matches("Address already in use").count(), 1, "{error}");
    assert!(error.starts_with(&format!("rustre: listening on {address}: ")), "{error}");

    // A server that is not rustre (here: what an HTTP server answers to anything).
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_address = http.local_addr().unwrap().to_string();
    let answering = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = http.accept().unwrap();
        let _ = stream.read(&mut [0; 1024]);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    });
    let stderr = run(&["--server", &http_address, "ls", "/"]);
    answering.join().unwrap();
    assert!(stderr.contains("does not speak the rustre protocol") && stderr.contains("HTTP"), "{stderr}");

    // Mountpoints: a file, a missing parent (nothing made), something mounted already. All are
    // refused before the server is asked.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let stderr = run(&["mount", &address, file.to_str().unwrap()]);
    assert!(stderr.contains("Not a directory"), "{stderr}");
    let deep = dir.path().join("no/such/path");
    let stderr = run(&["mount", &address, deep.to_str().unwrap()]);
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(!dir.path().join("no").exists(), "a failed mount made directories");
    let stderr = run(&["mount", &address, "/proc"]);
    assert!(stderr.contains("already a mount"), "{stderr}");

    // Help that shows what to type.
    let help = rustre_command().args(["server", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("--root-squash <on|off>") && !help.contains("possible values: true"), "{help}");
}

// `rustre fsck` finds a store made by a server clean, refuses while a server holds it, names a
// data object that belongs to no file, and `--repair` moves it aside without losing it.
#[test]
fn fsck_checks_a_data_directory_and_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let address = free_address();
    let mut server = Process::spawn(&["server", "--data", data_arg, "--listen", &address], dir.path(), "server");
    server.wait_until("the server accepts connections", || accepts(&address));
    for args in [&["mkdir", "/d"][..], &["put", "/etc/hostname", "/d/f"][..]] {
        let output = rustre_command().args(["--server", &address]).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let busy = rustre_command().args(["fsck", "--data", data_arg]).output().unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by another rustre server"), "{busy:?}");
    assert!(server.terminate().success());

    let fsck = |args: &[&str]| rustre_command().args(["fsck", "--data", data_arg]).args(args).output().unwrap();
    let clean = fsck(&[]);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success() && stdout.contains("clean"), "{stdout}");
    assert!(stdout.contains("3 inodes (2 directories), 2 entries, 1 data objects"), "{stdout}");

    let stray = data.join("objects").join("ff").join(format!("{:016x}", 0xffu64 + 0x1000));
    std::fs::write(&stray, b"whose?").unwrap();
    let broken = fsck(&[]);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("problem: data object") && stdout.contains("belongs to no regular file"), "{stdout}");
    assert!(String::from_utf8_lossy(&broken.stderr).contains("--repair"), "{broken:?}");

    let repaired = fsck(&["--repair"]);
    let stdout = String::from_utf8_lossy(&repaired.stdout);
    assert!(repaired.status.success() && stdout.contains("repaired: moved") && stdout.contains("clean"), "{stdout}");
    assert_eq!(std::fs::read(data.join("lost+found").join(format!("object-{:016x}", 0x10ff))).unwrap(), b"whose?");
    assert!(fsck(&[]).status.success());
}
