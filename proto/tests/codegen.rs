//! Regenerates the Rust code from agent/v1/agent.proto and fails if the checked-in copy differs.
//! `UPDATE_PROTO=1` writes the fresh code instead (what `cargo xtask codegen` runs).

use std::{fs, path::Path};

#[test]
fn generated_code_is_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let fds =
        protox::compile([root.join("agent/v1/agent.proto")], [root]).expect("agent.proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh = fs::read_to_string(out.path().join("agent.v1.rs")).expect("generated file");
    let checked_in = root.join("src/gen/agent.v1.rs");
    if std::env::var_os("UPDATE_PROTO").is_some() {
        fs::write(&checked_in, &fresh).expect("write src/gen/agent.v1.rs");
        return;
    }
    let current = fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "proto/src/gen/agent.v1.rs is stale: run `cargo xtask codegen` and commit the result"
    );
}
