//! Tree JSON (`docs/format.md` §8): decode, and on success `encode` decodes to the same tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::snapshot::Tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data) {
        let encoded = tree.encode();
        let back = Tree::decode(&encoded).expect("re-encoded tree decodes");
        assert_eq!(back, tree, "tree does not round-trip");
        // The encoding is what content addressing hashes, so it must be a fixed point.
        assert_eq!(back.encode(), encoded, "tree encoding is not deterministic");
        for n in &tree.nodes {
            let name = n.name_bytes().expect("decoded node has a name");
            assert!(tree.find(&name).is_some(), "decoded tree cannot find its own entry");
        }
    }
});
