//! Fuzz target `decode_stream`: The packet decoder over whole byte streams, split at arbitrary points.
//! The check itself is `mqtt_broker_fuzz::decode_stream` (fuzz/src/lib.rs), shared with tests/fuzz_replay.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_broker_fuzz::decode_stream(data));
