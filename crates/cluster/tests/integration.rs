//! tidemark-cluster's integration tests: openraft's storage suite over the WAL and the state
//! machine, and the engine (apply, seal, restart, crash) over a real repository.

mod integration {
    mod common;
    mod engine;
    mod replay_twin;
    mod store_failure;
    mod suite;
}
