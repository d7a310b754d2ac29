//! Replays every input the fuzzers in `fuzz/` have kept (their corpora and any crash inputs,
//! committed under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/`) through the same
//! entry points, on the stable toolchain: a decoder that panicked on one of them once fails
//! here for good.

use std::{fs, path::Path};

use bitswarm_protocols::fuzz::TARGETS;

#[test]
fn every_kept_fuzz_input_decodes_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "artifacts"] {
            let Ok(dir) = fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.expect("a readable corpus entry").path();
                let data = fs::read(&path).expect("a readable corpus file");
                target(&data);
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus for the {name} fuzzer");
        replayed += inputs;
    }
    println!("replayed {replayed} fuzz inputs");
}

/// Writes the seed inputs of every target into its corpus directory (run by hand before a
/// first fuzzing session; the corpus is committed).
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (i, (name, data)) in bitswarm_protocols::fuzz::seeds().into_iter().enumerate() {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(format!("seed-{i}")), data).expect("seed written");
    }
}
