//! Catalog rows (`docs/format.md` §14) as stored in redb: any bytes in an `entries`, `dirs` or
//! `pages` row are either refused with a reason or decode and encode back to the same bytes;
//! nothing panics. Input: byte 0 picks the table, byte 1 the key length, then key and value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [t, klen, rest @ ..] = data else {
        return;
    };
    let table = ["entries", "dirs", "pages"][usize::from(*t) % 3];
    let (key, value) = rest.split_at(usize::from(*klen).min(rest.len()));
    let _ = tidemark_cluster::check_row(table, key, value);
});
