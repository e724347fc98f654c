//! Envelopes (`docs/format.md` §5): opening arbitrary bytes with a fixed key must fail cleanly.
//! Forging a valid XChaCha20-Poly1305 tag is out of reach, so any `Ok` is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::crypto::{Crypto, Domain, MasterKey};
use tidemark_core::id::Kind;

fuzz_target!(|data: &[u8]| {
    let crypto = Crypto::encrypted(&MasterKey {
        version: 1,
        encrypt: [1; 32],
        id_key: [2; 32],
        chunker_seed: 3,
        authenticated_config: true,
    });
    let opened = crypto.open(Domain::Blob, data, Kind::Blob, &"x");
    assert!(opened.is_err(), "a fuzzed envelope opened: {} bytes", data.len());
});
