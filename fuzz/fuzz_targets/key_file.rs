//! Key file JSON (`docs/format.md` §4). `decode`, and `open` only where the Argon2id costs are out
//! of bounds: there it must refuse before deriving (in bounds, Argon2id is far too slow to fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::crypto::KeyFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = KeyFile::decode(data, &"fuzz") {
        assert_eq!(kf.version, 1);
        assert_eq!(kf.kdf, "argon2id");
        if kf.params.check().is_err() {
            assert!(kf.open(b"pw", &"fuzz").is_err(), "out-of-bounds costs refused");
        }
    }
});
