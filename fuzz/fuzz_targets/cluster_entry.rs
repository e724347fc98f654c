//! Raft log record bodies (`docs/format.md` §13; a normal entry carries a request of §15, a batch
//! or a seal, version 2 or 1): an entry, a vote, a committed and a purge log
//! id. Decoding never panics, and a decoded entry re-encodes to bytes that decode to the same
//! entry (re-encoding is not byte-identical: batch node JSON and membership JSON are
//! re-serialized). The first input byte is the entry's index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_cluster::codec::{
    decode_committed, decode_entry, decode_purged, decode_vote, encode_committed, encode_entry,
    encode_vote,
};

fuzz_target!(|data: &[u8]| {
    let Some((&index, body)) = data.split_first() else {
        return;
    };
    let index = u64::from(index);
    if let Ok(entry) = decode_entry(index, body) {
        let once = encode_entry(&entry);
        let back = decode_entry(index, &once).expect("a re-encoded entry decodes");
        assert_eq!(encode_entry(&back), once, "entry encoding is not stable");
        assert_eq!(back.log_id, entry.log_id);
    }
    if let Ok(vote) = decode_vote(body) {
        assert_eq!(encode_vote(&vote), body, "vote does not round-trip");
    }
    if let Ok(committed) = decode_committed(body) {
        let again = decode_committed(&encode_committed(committed.as_ref()))
            .expect("a re-encoded committed record decodes");
        assert_eq!(again, committed, "committed does not round-trip");
    }
    if let Ok(purged) = decode_purged(index, body) {
        assert_eq!(purged.index, index);
    }
});
