//! Batch, the payload of a normal log entry (`docs/format.md` §15): decode never panics, and a
//! decoded batch re-encodes to bytes that decode to the same batch. Re-encoding is not always
//! byte-identical (node JSON is re-serialized and a node's `name`/`subtree` are dropped), so the
//! check is that a second round trip changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::batch::Batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        let _ = batch.to_string();
        let once = batch.encode();
        let back = Batch::decode(&once).expect("a re-encoded batch decodes");
        assert_eq!(back.encode(), once, "batch encoding is not stable");
        assert_eq!(back.captured_ns, batch.captured_ns);
        assert_eq!(back.blobs, batch.blobs, "blobs do not round-trip");
        assert_eq!(back.edits.len(), batch.edits.len());
    }
});
