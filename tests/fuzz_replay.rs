//! Replays the fuzz targets' seeds and every crash the fuzzers found, on stable Rust and
//! without a fuzzer: the checks are the same functions the targets call
//! (`fuzz/src/lib.rs`, included here), so a finding fixed once stays fixed.
//!
//! - `fuzz/seeds/<target>/`: the committed seed corpus (valid packets, MQTT 5 packets with
//!   properties for `decode_v5`, configs, topic lists);
//!   regenerate with `cargo test --test fuzz_replay -- --ignored write_seed_corpus`.
//! - `fuzz/regressions/<target>/`: inputs that crashed a target once (libFuzzer's
//!   `crash-*` artifacts, renamed for what they found). They have no test of their own:
//!   `every_fuzz_regression_passes` replays every file there, printing each path, so a new
//!   finding is covered as soon as its file is committed. None so far (each directory holds
//!   only `.gitkeep`; see `fuzz/regressions/README.md`): the crashes found during issue 9
//!   came from the hostile-client suite and are named tests in `tests/hostile.rs`.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir(kind, target)) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        // Skips `.gitkeep` and other dotfiles.
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// The committed seed files are exactly what the harness generates, and each passes.
#[test]
fn seed_corpus_is_current_and_passes() {
    for target in harness::TARGETS {
        let generated = harness::seeds(target);
        assert!(!generated.is_empty(), "{target} has seeds");
        let on_disk = files("seeds", target);
        assert_eq!(
            on_disk.len(),
            generated.len(),
            "fuzz/seeds/{target} is stale: run `cargo test --test fuzz_replay -- --ignored write_seed_corpus`"
        );
        for (name, bytes) in &generated {
            let path = dir("seeds", target).join(name);
            let committed = std::fs::read(&path)
                .unwrap_or_else(|_| panic!("{} missing: regenerate the seeds", path.display()));
            assert_eq!(&committed, bytes, "{} is stale", path.display());
            harness::run(target, bytes);
        }
    }
}

/// Every input that once crashed a fuzz target passes now.
#[test]
fn every_fuzz_regression_passes() {
    let mut n = 0;
    for target in harness::TARGETS {
        // A renamed target or a missing directory would otherwise replay nothing, silently.
        assert!(
            dir("regressions", target).is_dir(),
            "fuzz/regressions/{target}/ is missing (keep it, with a .gitkeep when empty)"
        );
        for (path, bytes) in files("regressions", target) {
            eprintln!("replaying {}", path.display());
            harness::run(target, &bytes);
            n += 1;
        }
    }
    eprintln!("{n} fuzz regressions replayed");
}

/// Writes `fuzz/seeds/<target>/` from the harness (run after changing the seeds).
#[test]
#[ignore = "writes files: cargo test --test fuzz_replay -- --ignored write_seed_corpus"]
fn write_seed_corpus() {
    for target in harness::TARGETS {
        let d = dir("seeds", target);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (name, bytes) in harness::seeds(target) {
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
}

/// A few hand-made hostile inputs per target, beyond the seeds, so that the harness itself
/// is exercised on malformed data in every `cargo test`.
#[test]
fn harness_survives_hostile_inputs() {
    let inputs: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x00\x00\xff\xff\xff\xff\xff",
        b"\x03\x01\x10\xff\xff\xff\x7f",
        b"\x00\x05\x30\x04\x00\x02a#",
        "\u{0}/+/#\n#/a\n+a\n$SYS/x\n\n/".as_bytes(),
        b"\x00server: [\nlisteners: {{{",
        b"\x02user\ntopic readwrite +/#\npattern read %u/%c/#\n",
    ];
    for target in harness::TARGETS {
        for i in inputs {
            harness::run(target, i);
        }
    }
}
