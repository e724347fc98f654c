//! WAL append latency against a raw 4 KiB write + fdatasync on the same disk (issue 3's benchmark).
//!
//! `cargo run --release -p tidemark-core --example wal_latency -- DIR [N=2000] [THREADS=1]`
//! prints p50/p99/max in µs for: raw `pwrite`+`fdatasync` of 4 KiB, WAL append+sync of a 4 KiB
//! entry from one thread, and from THREADS threads at once (group commit shares fsyncs).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tidemark_core::wal::{FileLogDir, Wal, WalOptions};

fn pct(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).expect("usage: wal_latency DIR [N] [THREADS]"));
    let n: usize = args.get(2).map_or(2000, |s| s.parse().unwrap());
    let threads: usize = args.get(3).map_or(4, |s| s.parse().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let block = vec![0x5au8; 4096];

    let raw_path = dir.join("raw.dat");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&raw_path)
        .unwrap();
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&block, (i * 4096) as u64).unwrap();
        f.sync_data().unwrap();
        raw.push(t.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(&raw_path).unwrap();

    let wal_dir = dir.join("wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    let (wal, _) = Wal::open(
        Arc::new(FileLogDir::new(&wal_dir).unwrap()),
        WalOptions::default(),
    )
    .unwrap();
    let mut one = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        let lsn = wal.append([(i + 1, &block)]).unwrap();
        wal.sync(lsn).unwrap();
        one.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let syncs_one = wal.stats().syncs;
    drop(wal);
    std::fs::remove_dir_all(&wal_dir).unwrap();

    let (wal, _) = Wal::open(
        Arc::new(FileLogDir::new(&wal_dir).unwrap()),
        WalOptions::default(),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let next = Arc::new(Mutex::new(1u64));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let per = n / threads;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (wal, next, lat, block) = (wal.clone(), next.clone(), lat.clone(), block.clone());
            std::thread::spawn(move || {
                for _ in 0..per {
                    let t = Instant::now();
                    let lsn = {
                        let mut g = next.lock().unwrap();
                        let lsn = wal.append([(*g, &block)]).unwrap();
                        *g += 1;
                        lsn
                    };
                    wal.sync(lsn).unwrap();
                    lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e6);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let syncs_many = wal.stats().syncs;
    let many = Arc::try_unwrap(lat).unwrap().into_inner().unwrap();
    std::fs::remove_dir_all(&wal_dir).unwrap();

    let (r50, r99, rmax) = pct(raw);
    let (o50, o99, omax) = pct(one);
    let (m50, m99, mmax) = pct(many);
    println!("what,p50_us,p99_us,max_us,fsyncs,appends_per_s");
    println!("raw 4KiB pwrite+fdatasync,{r50:.0},{r99:.0},{rmax:.0},{n},");
    println!("wal append+sync 1 thread,{o50:.0},{o99:.0},{omax:.0},{syncs_one},");
    println!(
        "wal append+sync {threads} threads,{m50:.0},{m99:.0},{mmax:.0},{syncs_many},{:.0}",
        (per * threads) as f64 / elapsed
    );
    println!("ratio wal/raw p50 {:.2}, p99 {:.2}", o50 / r50, o99 / r99);
}
