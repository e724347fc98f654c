//! Integration tests of the test doubles and of what they test: the write-ahead log.

mod integration {
    mod wal;
}
