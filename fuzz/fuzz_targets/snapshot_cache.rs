//! The local snapshot cache file's plaintext (`docs/format.md` §16): decode never panics, and a
//! decoded list re-encodes to a plaintext that decodes to the same entries.
//!
//! The file ends in a BLAKE3 check of everything before it and holds zstd-compressed entries, so
//! random bytes would stop at the check. The first input byte picks how much this target fixes up:
//! 0 = decode the bytes as they are; 1 = the bytes are the body, the check is appended;
//! 2 = the bytes (after a 4-byte entry count) are the uncompressed entries, and a valid header,
//! compression and check are built around them, so the fuzzer reaches the entry parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::id::ObjectId;
use tidemark_core::snapshot::SnapshotList;

const REPO: ObjectId = ObjectId([7; 32]);

fn with_check(mut body: Vec<u8>) -> Vec<u8> {
    let check = blake3::hash(&body);
    body.extend_from_slice(check.as_bytes());
    body
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let plain = match mode % 3 {
        0 => rest.to_vec(),
        1 => with_check(rest.to_vec()),
        _ => {
            let Some((count, entries)) = rest.split_first_chunk::<4>() else {
                return;
            };
            let mut body = b"TMSC\x01".to_vec();
            body.extend_from_slice(&REPO.0);
            body.extend_from_slice(count);
            body.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            body.extend_from_slice(&zstd::bulk::compress(entries, 1).expect("zstd compresses"));
            with_check(body)
        }
    };
    if let Ok(list) = SnapshotList::decode(&plain, &REPO) {
        let back =
            SnapshotList::decode(&list.encode(&REPO), &REPO).expect("a re-encoded cache decodes");
        assert_eq!(back.len(), list.len());
        for i in 0..list.len() {
            assert_eq!(back.time_ns(i), list.time_ns(i));
            assert_eq!(back.json(i), list.json(i));
            let _ = list.get(i);
        }
        assert!(back.ids().eq(list.ids()), "ids do not round-trip");
    }
});
