//! Repository config JSON (`docs/format.md` §3): decode, round-trip, and a config that decodes
//! must give a working chunker (opening a repository builds one from it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::chunk::Chunker;
use tidemark_core::repo::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = Config::decode(data) {
        let back = Config::decode(&config.encode()).expect("re-encoded config decodes");
        assert_eq!(back, config, "config does not round-trip");
        let seed = config.plain_keys.map_or(1, |k| k.chunker_seed);
        Chunker::new(config.chunker, seed).expect("validated chunker params build a chunker");
    }
});
