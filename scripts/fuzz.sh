#!/usr/bin/env bash
# Fuzzes tidemark's decoders with cargo-fuzz (fuzz/, its own cargo workspace).
#
#   scripts/fuzz.sh                      # every target, 10 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh tree index_file
#   FUZZ_SANITIZER=address scripts/fuzz.sh
#
# Runs on the stable toolchain. By default without a sanitizer: tidemark-core forbids unsafe code
# and the targets look for panics, overflows and broken round trips, so ASan would only slow each
# run about 6x and cost a second full build. Debug assertions are on, so arithmetic overflow
# panics. FUZZ_SANITIZER=address works too, through RUSTC_BOOTSTRAP=1 (it needs -Zsanitizer);
# switching sanitizer rebuilds everything in fuzz/target.
# Seed inputs are (re)written into fuzz/corpus/<target>/ (gitignored) on every run; crashing
# inputs land in fuzz/artifacts/<target>/. Exits non-zero if any target crashed; the others still
# run. Reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions
# <target> fuzz/artifacts/<target>/crash-...`.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-10}"
all_targets=(pack_header index_file tree snapshot config key_file envelope wal_record wal_recovery
    batch cluster_entry snapshot_cache catalog_model catalog_rows)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

# cargo-fuzz passes -Z flags to rustc for sanitizers; this lets stable accept them. Always set, so
# the build fingerprint (which includes it) stays the same across runs.
export RUSTC_BOOTSTRAP=1
# The same flags for build and run, so `run` does not rebuild.
build_flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# seed TARGET NAME HEX: writes the bytes HEX as fuzz/corpus/TARGET/seed-NAME.
seed_hex() {
    mkdir -p "fuzz/corpus/$1"
    # shellcheck disable=SC2059 # the format is the data: \xHH escapes
    printf "$(printf '%s' "$3" | sed 's/../\\x&/g')" >"fuzz/corpus/$1/seed-$2"
}
# seed_text TARGET NAME TEXT
seed_text() {
    mkdir -p "fuzz/corpus/$1"
    printf '%s' "$3" >"fuzz/corpus/$1/seed-$2"
}
hex_of() { # hex_of TEXT: the bytes of TEXT as hex
    printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'
}
rep() { # rep HEX N: HEX repeated N times
    local out="" i
    for ((i = 0; i < $2; i++)); do out+="$1"; done
    printf '%s' "$out"
}

id_a="$(rep aa 32)"
id_b="$(rep 0b 32)"
# Pack header entry: kind, flags, stored_len u32, raw_len u32, blob id (42 bytes).
entry1="0001""05000000""03000000""$id_a"
entry2="0100""07000000""07000000""$id_b"
# pack_header input: header_offset u64 LE, then the plaintext: version 1, count u32, entries.
seed_hex pack_header empty "0000000000000000""01""00000000"
seed_hex pack_header two "0c00000000000000""01""02000000""$entry1$entry2"
# ... whose last 8 bytes are a trailer (hlen 0x30, "TMP1") for a pack of 0x40 bytes.
seed_hex pack_header trailer "4000000000000000""01""00000000""30000000""544d5031"
# Index: "TMIX", version 1, pack count u32, then per pack: id, entry count u32, entries + offset.
seed_hex index_file empty "544d4958""01""00000000"
pack1="$(rep 11 32)""02000000""$entry1""00000000""$entry2""05000000"
pack2="$(rep 22 32)""00000000"
seed_hex index_file two "544d4958""01""02000000""$pack1$pack2"

node_file='{"name":"a.txt","type":"file","mode":420,"uid":1000,"gid":1000,"user":"alice","group":"alice","mtime_ns":1700000000000000000,"atime_ns":1700000000000000000,"ctime_ns":1700000000000000000,"inode":12,"device_id":2049,"links":1,"size":5,"content":["'"$id_a"'"],"xattrs":[{"name":"user.k","value":"dg=="}]}'
node_hex='{"name_hex":"ff61fe","type":"fifo","mode":420,"uid":0,"gid":0,"mtime_ns":-1,"atime_ns":0,"ctime_ns":0,"inode":1,"device_id":1,"links":1}'
node_dir='{"name":"dir","type":"dir","mode":493,"uid":0,"gid":0,"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"inode":2,"device_id":1,"links":2,"subtree":"'"$id_b"'"}'
node_link='{"name":"link","type":"symlink","mode":511,"uid":0,"gid":0,"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"inode":3,"device_id":1,"links":1,"target_hex":"2f746d70ff"}'
node_dev='{"name":"zdev","type":"chardev","mode":438,"uid":0,"gid":0,"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"inode":4,"device_id":1,"links":1,"rdev":259,"sparse":true}'
seed_text tree empty '{"version":1,"nodes":[]}'
seed_text tree full '{"version":1,"nodes":['"$node_file,$node_dir,$node_link,$node_dev,$node_hex"']}'

seed_text snapshot full '{"version":1,"time":"2024-05-01T10:00:00.123456789Z","hostname":"nas","username":"alice","uid":1000,"gid":1000,"paths":["/home/alice/docs"],"tags":["daily"],"parent":"'"$id_b"'","tree":"'"$id_a"'","program_version":"tidemark 0.1.0","summary":{"files_new":1,"files_changed":2,"files_unmodified":3,"dirs":4,"other":5,"errors":0,"data_blobs_new":6,"tree_blobs_new":7,"bytes_read":8,"bytes_total":9,"data_added":10,"data_added_packed":11,"start":"2024-05-01T10:00:00Z","end":"2024-05-01T10:01:00Z"}}'
seed_text snapshot minimal '{"version":1,"time":"x","hostname":"","username":"","uid":0,"gid":0,"paths":[],"parent":null,"tree":"'"$id_a"'","program_version":""}'

chunker='{"algorithm":"fastcdc-v2020","min_size":262144,"avg_size":1048576,"max_size":4194304,"normalization":1}'
seed_text config encrypted '{"version":1,"id":"'"$id_a"'","encryption":"xchacha20poly1305-argon2id","compression":{"algorithm":"zstd","level":3},"chunker":'"$chunker"',"pack_size":16777216,"plain_keys":null}'
seed_text config plain '{"version":2,"id":"'"$id_b"'","encryption":"none","compression":{"algorithm":"zstd","level":0},"chunker":{"algorithm":"fastcdc-v2020","min_size":1024,"avg_size":4096,"max_size":16384,"normalization":3},"pack_size":65536,"plain_keys":{"id_key":"'"$id_a"'","chunker_seed":7}}'
seed_text config sealed '{"version":2,"id":"'"$id_a"'","encryption":"xchacha20poly1305-argon2id","compression":{"algorithm":"zstd","level":3},"chunker":'"$chunker"',"pack_size":16777216,"plain_keys":null,"mac":"'"$id_b"'"}'

seed_text key_file full '{"version":1,"created":"2024-05-01T10:00:00+00:00","hostname":"nas","username":"alice","kdf":"argon2id","m_cost_kib":65536,"t_cost":3,"p_cost":1,"salt":"AAAAAAAAAAAAAAAAAAAAAA==","data":"AAAA"}'

seed_hex envelope short "$(rep 00 39)"
seed_hex envelope min "$(rep 00 40)"
seed_hex envelope longer "$(rep 5a 64)"

# WAL records (crc, len, kind, body), CRCs precomputed: entry 1 "hello", meta vote, truncate, purge.
seed_hex wal_record entry "a176763b0d00000001010000000000000068656c6c6f"
seed_hex wal_record meta "eda5ac4e050000000200766f7465"
seed_hex wal_record truncate "3309a6250900000003010000000000000000"
seed_hex wal_record purge "5b1539500a0000000400000000000000006964"
# wal_recovery: mode 1 = a valid header is prepended; then records (two entries, a meta, a purge).
seed_hex wal_recovery records "01a176763b0d00000001010000000000000068656c6c6f638808540900000001020000000000000078eda5ac4e050000000200766f7465"
seed_hex wal_recovery torn "01a176763b0d00000001010000000000000068656c6c6fa176763b0d0000000101"
seed_hex wal_recovery two "031600a176763b0d00000001010000000000000068656c6c6f5b1539500a0000000400000000000000006964"

# Batch (§15): version 1, capture time, one blob (id, kind 0, flags 1, raw_len 5, envelope of 3),
# then a put of "a.txt" (node JSON without a name), a delete of "a" and a move of "a" to "b/c".
node_put='{"type":"file","mode":420,"uid":0,"gid":0,"mtime_ns":1,"atime_ns":0,"ctime_ns":0,"inode":9,"device_id":1,"links":1,"size":5,"content":["'"$id_a"'"]}'
node_len="$(printf '%08x' "${#node_put}" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/')"
blob1="$id_a""00""01""05000000""03000000""aabbcc"
edits3="03000000""01""0500""$(hex_of a.txt)""$node_len""$(hex_of "$node_put")""02""0100""61""03""0100""61""0300""622f63"
batch_full="01""00e1f50500000000""01000000""$blob1""$edits3"
seed_hex batch empty "01""0000000000000000""00000000""00000000"
seed_hex batch full "$batch_full"
# cluster_entry: index byte, then the record body (§13): entries blank, normal, membership; a vote;
# a committed log id.
term_node="0200000000000000""0100000000000000"
membership='{"configs":[[1]],"nodes":{"1":{"addr":"127.0.0.1:7000"}}}'
seed_hex cluster_entry blank "05""$term_node""00"
seed_hex cluster_entry normal "05""$term_node""01""$batch_full"
seed_hex cluster_entry membership "01""$term_node""02""$(hex_of "$membership")"
seed_hex cluster_entry vote "00""$term_node""01"
seed_hex cluster_entry committed "00""01""$term_node""0700000000000000"
# snapshot_cache: mode 2 = entry count, then the uncompressed entries (id, time ns, JSON length,
# JSON), which the target wraps in a valid header, zstd and check hash.
snap_json='{"version":1,"time":"2024-05-01T10:00:00Z","hostname":"nas","username":"","uid":0,"gid":0,"paths":["/a"],"parent":null,"tree":"'"$id_a"'","program_version":""}'
snap_len="$(printf '%08x' "${#snap_json}" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/')"
seed_hex snapshot_cache one "02""01000000""$id_a""0100000000000000""$snap_len""$(hex_of "$snap_json")"
seed_hex snapshot_cache two "02""02000000""$id_a""0100000000000000""02000000""7b7d""$id_b""0200000000000000""00000000"

echo "fuzz.sh: building ${targets[*]}" >&2
build_start=$SECONDS
if [ "$#" -eq 0 ]; then
    cargo fuzz build "${build_flags[@]}" # all targets in one cargo invocation
else
    for t in "${targets[@]}"; do
        cargo fuzz build "${build_flags[@]}" "$t"
    done
fi
echo "fuzz.sh: built in $((SECONDS - build_start)) s" >&2

failed=()
for t in "${targets[@]}"; do
    echo "fuzz.sh: fuzzing $t for ${seconds} s" >&2
    # libFuzzer logs every new input; keep that in a file and show its end (all of it on a crash).
    log="fuzz/artifacts/$t.log"
    mkdir -p fuzz/artifacts
    if cargo fuzz run "${build_flags[@]}" "$t" -- -max_total_time="$seconds" >"$log" 2>&1; then
        tail -n 2 "$log" >&2
    else
        cat "$log" >&2
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, no crash" >&2
