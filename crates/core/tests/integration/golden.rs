//! Pinned chunk boundaries and ids for seeded input. A change here silently breaks dedup
//! against every existing repository: if one of these fails, the format changed.
#![allow(clippy::unreadable_literal)] // pinned values, copied as printed

use tidemark_core::chunk::{Chunker, ChunkerParams};
use tidemark_core::crypto::Crypto;

fn lengths(params: ChunkerParams, seed: u64, data: &[u8]) -> Vec<usize> {
    let c = Chunker::new(params, seed).unwrap();
    let mut buf = c.buffer();
    let mut out = vec![];
    c.stream(&mut &data[..], &mut buf, |ch| {
        out.push(ch.len());
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn golden_chunk_boundaries_small_params() {
    let data = tidemark_testkit::seeded_bytes(1 << 20, 7);
    let p = ChunkerParams {
        min_size: 16 << 10,
        avg_size: 64 << 10,
        max_size: 256 << 10,
        ..ChunkerParams::default()
    };
    let got = lengths(p, 0x5eed, &data);
    assert_eq!(got, GOLDEN_SMALL, "chunk boundaries changed: {got:?}");
}

#[test]
fn golden_chunk_boundaries_default_params() {
    let data = tidemark_testkit::seeded_bytes(12 << 20, 11);
    let got = lengths(ChunkerParams::default(), 0x0123_4567_89ab_cdef, &data);
    assert_eq!(got, GOLDEN_DEFAULT, "chunk boundaries changed: {got:?}");
}

#[test]
fn golden_seed_changes_boundaries() {
    let data = tidemark_testkit::seeded_bytes(1 << 20, 7);
    let p = ChunkerParams {
        min_size: 16 << 10,
        avg_size: 64 << 10,
        max_size: 256 << 10,
        ..ChunkerParams::default()
    };
    assert_ne!(lengths(p, 1, &data), lengths(p, 2, &data));
}

#[test]
fn golden_blob_ids() {
    let c = Crypto::plain([7; 32]);
    assert_eq!(c.blob_id(b"hello tidemark").to_hex(), GOLDEN_ID_HELLO);
    assert_eq!(c.blob_id(b"").to_hex(), GOLDEN_ID_EMPTY);
}

#[test]
fn golden_seeded_data_is_stable() {
    // The seeded generator itself is part of the golden input.
    assert_eq!(
        blake3::hash(&tidemark_testkit::seeded_bytes(1 << 20, 7))
            .to_hex()
            .as_str(),
        GOLDEN_DATA_7
    );
}

const GOLDEN_SMALL: &[usize] = &[
    77811, 68277, 76578, 78859, 80311, 75327, 27661, 126672, 75312, 160767, 154611, 46390,
];
const GOLDEN_DEFAULT: &[usize] = &[
    633939, 1116567, 743381, 684932, 525550, 903939, 244023, 819267, 311395, 550018, 1298197,
    1272215, 584041, 562401, 520306, 909108, 559407, 344226,
];
const GOLDEN_ID_HELLO: &str = "8b80937dca331771242f15a8e9a6447f045a0060c311e797b3bd7ae67e74135d";
const GOLDEN_ID_EMPTY: &str = "29dc8692843c22e4bdc8f56a93c364a3c50a82df3887397a90c02c7da1636876";
const GOLDEN_DATA_7: &str = "dedd87991eac85b081fbd9b57be62cdcb880447fe837cf9cdf73941f5e99114f";
