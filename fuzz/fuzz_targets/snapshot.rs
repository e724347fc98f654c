//! Snapshot JSON (`docs/format.md` §9): decode, and on success the stored form (an unencrypted
//! envelope is the JSON itself) decodes to the same snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::crypto::Crypto;
use tidemark_core::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = Snapshot::decode(data) {
        let _ = snap.datetime();
        let (_, sealed) = snap.seal(&Crypto::plain([0; 32]));
        let back = Snapshot::decode(&sealed).expect("re-encoded snapshot decodes");
        assert_eq!(back, snap, "snapshot does not round-trip");
    }
});
