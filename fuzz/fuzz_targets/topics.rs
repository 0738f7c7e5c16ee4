//! Fuzz target `topics`: Topic-name and topic-filter parsers, matching, the subscription trie and the retained store.
//! The check itself is `mqtt_broker_fuzz::topics` (fuzz/src/lib.rs), shared with tests/fuzz_replay.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_broker_fuzz::topics(data));
