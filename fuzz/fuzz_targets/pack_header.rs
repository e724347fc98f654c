//! Pack header plaintext and pack trailer (`docs/format.md` §6).
//!
//! Input: 8 bytes little-endian `header_offset` (also used as the pack length for the trailer
//! check), then the header plaintext. The last 8 bytes of the plaintext (or fewer, when it is
//! shorter) double as a pack trailer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::id::ObjectId;
use tidemark_core::pack::{decode_header, header_location, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, plain) = data.split_at(8);
    let header_offset = u64::from_le_bytes(head.try_into().expect("8 bytes"));

    if let Ok(entries) = decode_header(plain, header_offset) {
        // The entries must tile [0, header_offset) exactly, in order.
        let mut end = 0u64;
        for e in &entries {
            assert_eq!(u64::from(e.offset), end, "entries are not contiguous");
            end += u64::from(e.stored_len);
        }
        assert_eq!(end, header_offset, "entries do not end at the header");
    }

    let trailer = &plain[plain.len().saturating_sub(TRAILER_LEN)..];
    let pack_len = header_offset;
    if let Ok((off, len)) = header_location(pack_len, trailer, &ObjectId::default()) {
        // The header and the trailer must fit in the pack and end exactly at its end.
        assert_eq!(
            off.checked_add(len).and_then(|x| x.checked_add(TRAILER_LEN as u64)),
            Some(pack_len),
            "header location does not end at the trailer"
        );
    }
});
