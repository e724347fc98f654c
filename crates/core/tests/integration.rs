//! Integration tests of tidemark-core over in-memory stores: prune and repair as plan, then
//! execute, on repositories built blob by blob; and the pinned (golden) format values.

mod integration {
    pub mod common;
    pub mod golden;
    pub mod lease;
    pub mod prune;
    pub mod repair;
}
