//! Metadata rates through the kernel in any directories, one after another in the same run, so
//! a rustre mount is measured beside references (tmpfs, a FUSE passthrough) on the same machine
//! at the same moment. Phases per directory: create (`open(O_CREAT|O_EXCL)` + close), stat
//! (every file three times), open/close (`O_RDONLY`), unlink; `threads` threads share the files.
//!
//! `cargo run --release -p rustre-fuse --example meta_rates -- FILES THREADS DIR...`
//!
//! A measuring program, not a test: it asserts nothing but that every call succeeds.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stats of every file per stat phase.
const STAT_ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: meta_rates FILES THREADS DIR...");
        std::process::exit(2);
    }
    let files: usize = args[0].parse().expect("FILES is a number");
    let threads: usize = args[1].parse().expect("THREADS is a number");
    println!("{files} files, {threads} threads");
    println!("{:<40} {:>12} {:>12} {:>12} {:>12}", "directory", "create/s", "stat/s", "open+close/s", "unlink/s");
    for dir in &args[2..] {
        let dir = Path::new(dir).join(format!("meta-rates-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("a fresh directory");
        let rates = measure(&dir, files, threads);
        std::fs::remove_dir(&dir).expect("the directory is empty again");
        println!(
            "{:<40} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
            dir.parent().unwrap().display(),
            rates[0],
            rates[1],
            rates[2],
            rates[3]
        );
    }
}

/// Runs `work(path)` on every file, spread over the threads; returns calls per second.
fn phase(paths: &[PathBuf], threads: usize, calls_per_file: usize, work: fn(&Path)) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for chunk in paths.chunks(paths.len().div_ceil(threads)) {
            scope.spawn(move || chunk.iter().for_each(|path| work(path)));
        }
    });
    (paths.len() * calls_per_file) as f64 / started.elapsed().as_secs_f64()
}

fn measure(dir: &Path, files: usize, threads: usize) -> [f64; 4] {
    let paths: Vec<PathBuf> = (0..files).map(|index| dir.join(format!("f{index:07}"))).collect();
    let create = phase(&paths, threads, 1, |path| {
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).expect("create");
    });
    let stat = phase(&paths, threads, STAT_ROUNDS, |path| {
        for _ in 0..STAT_ROUNDS {
            std::fs::metadata(path).expect("stat");
        }
    });
    let open = phase(&paths, threads, 1, |path| {
        std::fs::File::open(path).expect("open");
    });
    let unlink = phase(&paths, threads, 1, |path| std::fs::remove_file(path).expect("unlink"));
    [create, stat, open, unlink]
}
