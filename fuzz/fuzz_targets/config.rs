//! Fuzz target `config`: The YAML config loader and the Mosquitto password and ACL file parsers.
//! The check itself is `mqtt_broker_fuzz::config` (fuzz/src/lib.rs), shared with tests/fuzz_replay.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_broker_fuzz::config(data));
