//! The checked-in Rust code must be what agent/v1/agent.proto generates. `generated_code_is_fresh`
//! only compares (it never writes, whatever the environment says); `cargo xtask codegen` runs the
//! ignored `regenerate` test, which writes the fresh code.
#![expect(
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::{fs, path::Path};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let out = tempfile::tempdir().expect("tempdir");
    let fds = protox::compile([root().join("agent/v1/agent.proto")], [root()])
        .expect("agent.proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    fs::read_to_string(out.path().join("agent.v1.rs")).expect("generated file")
}

#[test]
fn generated_code_is_fresh() {
    let current = fs::read_to_string(root().join("src/gen/agent.v1.rs")).unwrap_or_default();
    assert!(
        current == generate(),
        "proto/src/gen/agent.v1.rs is stale: run `cargo xtask codegen` and commit the result"
    );
}

#[test]
#[ignore = "writes proto/src/gen: run through `cargo xtask codegen`"]
fn regenerate() {
    let path = root().join("src/gen/agent.v1.rs");
    let fresh = generate();
    fs::write(&path, &fresh).expect("write src/gen/agent.v1.rs");
    assert_eq!(fs::read_to_string(&path).expect("read back"), fresh);
}
