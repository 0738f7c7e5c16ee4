//! Fuzz target `decode_v5`: The packet decoder of an MQTT 5 connection (properties, reason codes) over whole byte streams, split at arbitrary points.
//! The check itself is `mqtt_broker_fuzz::decode_v5` (fuzz/src/lib.rs), shared with tests/fuzz_replay.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_broker_fuzz::decode_v5(data));
