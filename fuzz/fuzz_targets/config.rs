//! Repository config JSON (`docs/format.md` §3): decode, round-trip, and a config that decodes
//! must give a working chunker (opening a repository builds one from it). Its MAC check must not
//! panic on any input, and a config sealed by a writer must authenticate after decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::chunk::Chunker;
use tidemark_core::crypto::{Crypto, MasterKey};
use tidemark_core::repo::{Config, Encryption};

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = Config::decode(data) {
        let back = Config::decode(&config.encode()).expect("re-encoded config decodes");
        assert_eq!(back, config, "config does not round-trip");
        let seed = config.plain_keys.map_or(1, |k| k.chunker_seed);
        Chunker::new(config.chunker, seed).expect("validated chunker params build a chunker");

        let key = MasterKey {
            version: 1,
            encrypt: [1; 32],
            id_key: [2; 32],
            chunker_seed: 3,
            authenticated_config: true,
        };
        let crypto = match config.encryption {
            Encryption::XChaCha20Poly1305 => Crypto::encrypted(&key),
            Encryption::None => Crypto::plain(key.id_key),
        };
        let _ = config.authenticate(data, &crypto, true);
        let sealed = config.seal(&crypto).encode();
        let decoded = Config::decode(&sealed).expect("a sealed config decodes");
        decoded
            .authenticate(&sealed, &crypto, true)
            .expect("a sealed config authenticates");
    }
});
