//! Write-ahead log record framing (`docs/format.md` §12): decode never panics, a decoded record
//! re-encodes to exactly the bytes it came from, and every shorter prefix of it is incomplete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::wal::record::{decode, Decoded, SegmentHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SegmentHeader::decode(data) {
        assert_eq!(
            &h.encode()[..],
            &data[..32],
            "segment header does not round-trip"
        );
    }
    match decode(data) {
        Decoded::Record { record, len } => {
            assert_eq!(record.encode(), &data[..len], "record does not round-trip");
            for cut in [0, 1, 8, 9, len / 2, len - 1] {
                if cut < len {
                    assert!(
                        matches!(decode(&data[..cut]), Decoded::Incomplete { .. }),
                        "a prefix of a record is not incomplete"
                    );
                }
            }
        }
        Decoded::Incomplete { need } => {
            if let Some(need) = need {
                assert!(need > data.len(), "incomplete but enough bytes");
            }
        }
        Decoded::Bad(reason) => assert!(!reason.is_empty()),
    }
});
