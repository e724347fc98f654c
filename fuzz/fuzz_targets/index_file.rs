//! Index file plaintext (`docs/format.md` §7): decode, and on success the encoding round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::repo::index::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(packs) = decode(data) {
        let again = encode(&packs);
        let back = decode(&again).expect("re-encoded index decodes");
        assert_eq!(back, packs, "index does not round-trip");
        // The decoder accepts nothing but the canonical form (fixed layout, no trailing bytes,
        // only known kinds and flags), so re-encoding gives back the input exactly.
        assert_eq!(again, data, "index decoder accepted a non-canonical encoding");
    }
});
