//! Many clients at once against one real server: no lost or duplicated entries, readdir that
//! stays correct while the directory changes, large directories, and the atomic open.
mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use rustre_client::OpenOptions;
use rustre_proto::{Errno, ROOT_INO};

// Eight clients create 200 files each in one directory at once: every create succeeds, and the
// directory then lists exactly the 1,600 names, each once, each with its own inode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_creating_in_one_directory_lose_nothing() {
    const CLIENTS: usize = 8;
    const FILES_PER_CLIENT: usize = 200;
    let server = TestServer::start().await;
    server.client().await.mkdir("/shared", 0o755).await.unwrap();
    let mut tasks = Vec::new();
    for client_index in 0..CLIENTS {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let directory = client.stat("/shared").await.unwrap().ino;
            let creates = (0..FILES_PER_CLIENT).map(|file_index| {
                let client = client.clone();
                async move {
                    let name = format!("c{client_index}-f{file_index}");
                    let flags = OpenOptions::new().write(true).create_new(true).flags().unwrap();
                    let file = client.open_at(directory, name.as_bytes(), flags, 0o644).await.unwrap();
                    assert!(file.created());
                    file.close().await.unwrap();
                }
            });
            futures::future::join_all(creates).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = server.client().await;
    let entries = client.read_dir("/shared").await.unwrap();
    assert_eq!(entries.len(), CLIENTS * FILES_PER_CLIENT);
    let names: BTreeSet<_> = entries.iter().map(|entry| entry.name.clone()).collect();
    assert_eq!(names.len(), entries.len(), "no name listed twice");
    let inos: BTreeSet<_> = entries.iter().map(|entry| entry.ino).collect();
    assert_eq!(inos.len(), entries.len(), "every file has its own inode");
    for client_index in 0..CLIENTS {
        for file_index in 0..FILES_PER_CLIENT {
            assert!(names.contains(format!("c{client_index}-f{file_index}").as_bytes()));
        }
    }
}

// Many clients open the same name with O_CREAT at once: all succeed on one inode, exactly one of
// them created it. With O_EXCL exactly one wins and the others get EEXIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_opens_agree_on_one_inode() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(server.client().await);
    }
    for round in 0..20 {
        let name = format!("shared-{round}");
        let opens = clients.iter().map(|client| {
            let name = name.clone();
            async move {
                let flags = OpenOptions::new().write(true).create(true).flags().unwrap();
                client.open_at(ROOT_INO, name.as_bytes(), flags, 0o644).await
            }
        });
        let files: Vec<_> = futures::future::join_all(opens).await.into_iter().map(|file| file.unwrap()).collect();
        assert_eq!(files.iter().filter(|file| file.created()).count(), 1, "exactly one open created it");
        let inos: BTreeSet<_> = files.iter().map(|file| file.ino()).collect();
        assert_eq!(inos.len(), 1, "all opens got the same inode");

        let name = format!("exclusive-{round}");
        let opens = clients.iter().map(|client| {
            let name = name.clone();
            async move {
                let flags = OpenOptions::new().write(true).create_new(true).flags().unwrap();
                client.open_at(ROOT_INO, name.as_bytes(), flags, 0o644).await
            }
        });
        let results = futures::future::join_all(opens).await;
        assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1, "exactly one O_EXCL winner");
        for result in results {
            if let Err(error) = result {
                assert_eq!(error.errno, Errno::EEXIST);
            }
        }
    }
}

// A reader pages through a directory (7 entries a page) while another client creates, removes
// and renames other names in it. Every name that exists for the whole listing is returned exactly
// once; a churned name may show up twice only as two different files (removed, then renamed in
// again under a new cookie); nothing returned is a name that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_stays_correct_while_the_directory_changes() {
    let server = TestServer::start().await;
    let setup = server.client().await;
    let directory = setup.mkdir("/d", 0o755).await.unwrap().ino;
    for index in 0..300 {
        setup.write(format!("/d/stable-{index:03}"), b"").await.unwrap();
    }
    for index in 0..100 {
        setup.write(format!("/d/churn-{index:03}"), b"").await.unwrap();
    }
    let churner = server.client().await;
    let churn = tokio::spawn(async move {
        for round in 0..300 {
            let index = round % 100;
            churner.remove_file(format!("/d/churn-{index:03}")).await.unwrap();
            churner.write(format!("/d/new-{round:03}"), b"").await.unwrap();
            churner.rename(format!("/d/new-{round:03}"), format!("/d/churn-{index:03}")).await.unwrap();
        }
    });
    let reader = server.client().await;
    for _ in 0..10 {
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut seen_as: BTreeSet<(Vec<u8>, u64)> = BTreeSet::new();
        let mut cookie = 0;
        loop {
            let (page, end) = reader.read_dir_page(directory, cookie, 7, false).await.unwrap();
            for entry in &page {
                *seen.entry(entry.name.clone()).or_default() += 1;
                assert!(seen_as.insert((entry.name.clone(), entry.ino)), "one file listed twice under one name");
                assert!(entry.cookie > cookie, "cookies grow");
                cookie = entry.cookie;
            }
            if end {
                break;
            }
        }
        for index in 0..300 {
            let name = format!("stable-{index:03}").into_bytes();
            assert_eq!(seen.get(&name), Some(&1), "{} listed once", String::from_utf8_lossy(&name));
        }
        for name in seen.keys() {
            let name = String::from_utf8_lossy(name);
            assert!(name.starts_with("stable-") || name.starts_with("churn-") || name.starts_with("new-"), "{name}");
        }
    }
    churn.await.unwrap();
}

// A directory of 100,000 entries is created, listed in full (each name once) and looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_100000_entries_works() {
    const ENTRIES: usize = 100_000;
    const WRITERS: usize = 64;
    let server = TestServer::start().await;
    let client = server.client().await;
    let directory = client.mkdir("/big", 0o755).await.unwrap().ino;
    let writers = (0..WRITERS).map(|writer| {
        let client = client.clone();
        async move {
            for index in (writer..ENTRIES).step_by(WRITERS) {
                client.mkdir_at(directory, format!("entry-{index:06}").as_bytes(), 0o755).await.unwrap();
            }
        }
    });
    futures::future::join_all(writers).await;
    let entries = client.read_dir("/big").await.unwrap();
    assert_eq!(entries.len(), ENTRIES);
    let names: BTreeSet<_> = entries.iter().map(|entry| entry.name.clone()).collect();
    assert_eq!(names.len(), ENTRIES);
    assert_eq!(client.stat("/big").await.unwrap().nlink as usize, 2 + ENTRIES);
    assert_eq!(client.stat("/big/entry-099999").await.unwrap().kind, rustre_proto::FileKind::Directory);
}

// Unlink and create of one name in flight at once from one client: whatever the order the server
// applies them in, the create never fails with EEXIST and the data written is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_and_create_in_flight_together_never_fail() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for round in 0..200u32 {
        client.write("/f", b"old").await.unwrap();
        let unlink = client.remove_file("/f");
        let create = async {
            let mut file = client.open("/f", OpenOptions::new().write(true).create(true)).await?;
            file.write_all(&round.to_le_bytes()).await?;
            file.close().await
        };
        let (unlinked, created) = tokio::join!(unlink, create);
        created.unwrap();
        match unlinked {
            // The unlink came first: the file holds the new data.
            Ok(()) if client.exists("/f").await.unwrap() => {
                assert_eq!(client.read("/f").await.unwrap(), round.to_le_bytes())
            }
            // The unlink came last and removed the file the create opened: allowed.
            Ok(()) => {}
            Err(error) => panic!("unlink failed: {error}"),
        }
    }
}
