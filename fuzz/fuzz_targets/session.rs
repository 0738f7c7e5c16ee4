//! Fuzz target `session`: A sequence of arbitrary packets and events fed to one session state machine.
//! The check itself is `mqtt_broker_fuzz::session` (fuzz/src/lib.rs), shared with tests/fuzz_replay.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_broker_fuzz::session(data));
