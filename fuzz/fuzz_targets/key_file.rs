//! Key file JSON (`docs/format.md` §4). Only `decode`: `open` runs Argon2id, far too slow to fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::crypto::KeyFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = KeyFile::decode(data, &"fuzz") {
        assert_eq!(kf.version, 1);
        assert_eq!(kf.kdf, "argon2id");
    }
});
