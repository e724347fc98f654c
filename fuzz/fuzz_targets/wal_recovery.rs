//! Write-ahead log recovery (`docs/format.md` §12) over arbitrary segment files: opening never
//! panics; when it succeeds every entry it reports reads back, and the log takes a new entry.
//! Input: byte 0 picks the layout (bit 0: prepend a valid header for segment 1; bit 1: split the
//! rest into two segments at the position in bytes 1..3; bit 2: discard after corruption; bit 3:
//! the headers say segment version 1, without durable marks), then the segment bytes.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tidemark_core::wal::record::{SegmentHeader, VERSION, VERSION_1};
use tidemark_core::wal::{Wal, WalOptions};
use tidemark_testkit::MemLogDir;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let version = if mode & 8 != 0 { VERSION_1 } else { VERSION };
    let header = |seq| {
        SegmentHeader {
            version,
            seq,
            log_id: 7,
        }
        .encode()
        .to_vec()
    };
    let mut files = BTreeMap::new();
    if mode & 2 != 0 && rest.len() >= 2 {
        let at = (usize::from(u16::from_le_bytes([rest[0], rest[1]]))).min(rest.len() - 2);
        let (a, b) = rest[2..].split_at(at);
        let mut second = header(2);
        second.extend_from_slice(b);
        let mut first = if mode & 1 != 0 { header(1) } else { Vec::new() };
        first.extend_from_slice(a);
        files.insert(1, first);
        files.insert(2, second);
    } else {
        let mut first = if mode & 1 != 0 { header(1) } else { Vec::new() };
        first.extend_from_slice(rest);
        files.insert(1, first);
    }
    let dir = MemLogDir::with_files(files);
    let opts = WalOptions {
        segment_size: 4096,
        discard_after_corruption: mode & 4 != 0,
    };
    if let Ok((wal, _)) = Wal::open(Arc::new(dir), opts) {
        if let Some((first, last)) = wal.bounds().expect("fresh log is not poisoned") {
            let all = wal
                .read_range(first..last + 1)
                .expect("recovered entries read back");
            assert_eq!(all.len() as u64, last - first + 1);
        }
        let next = wal
            .last_index()
            .expect("fresh log")
            .map_or(0, |l| l.saturating_add(1));
        if next < u64::MAX {
            let lsn = wal
                .append([(next, b"new")])
                .expect("recovered log takes appends");
            wal.sync(lsn).expect("memory sync");
            assert_eq!(wal.read(next).expect("reads").as_deref(), Some(&b"new"[..]));
        }
    }
});
