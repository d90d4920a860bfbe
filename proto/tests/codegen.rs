//! The checked-in Rust code must be what the .proto files generate: agent/v1/agent.proto and
//! the vendored OpenTelemetry logs protocol (opentelemetry/proto/..., the official definitions)
//! and the vendored Kubernetes CRI v1 API (cri/runtime/v1/api.proto, client only).
//! `generated_code_is_fresh` only compares (it never writes, whatever the environment says);
//! `cargo xtask codegen` runs the ignored `regenerate` test, which writes the fresh code.
#![expect(
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::{fs, path::Path};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The generated files, by name under src/gen.
const GENERATED: &[&str] = &[
    "agent.v1.rs",
    "opentelemetry.proto.collector.logs.v1.rs",
    "opentelemetry.proto.common.v1.rs",
    "opentelemetry.proto.logs.v1.rs",
    "opentelemetry.proto.resource.v1.rs",
    "runtime.v1.rs",
];

/// (file name, contents) of every generated file.
fn generate() -> Vec<(&'static str, String)> {
    let out = tempfile::tempdir().expect("tempdir");
    let fds = protox::compile(
        [
            root().join("agent/v1/agent.proto"),
            root().join("opentelemetry/proto/collector/logs/v1/logs_service.proto"),
        ],
        [root()],
    )
    .expect("the .proto files compile");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    // The container runtime's CRI v1 API: the agent and the test harness are its clients only.
    let cri = protox::compile([root().join("cri/runtime/v1/api.proto")], [root()])
        .expect("the CRI .proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(cri)
        .expect("CRI code generation");
    GENERATED
        .iter()
        .map(|name| {
            let code = fs::read_to_string(out.path().join(name)).expect("generated file");
            (*name, code)
        })
        .collect()
}

#[test]
fn generated_code_is_fresh() {
    for (name, fresh) in generate() {
        let current = fs::read_to_string(root().join("src/gen").join(name)).unwrap_or_default();
        assert!(
            current == fresh,
            "proto/src/gen/{name} is stale: run `cargo xtask codegen` and commit the result"
        );
    }
}

#[test]
#[ignore = "writes proto/src/gen: run through `cargo xtask codegen`"]
fn regenerate() {
    for (name, fresh) in generate() {
        let path = root().join("src/gen").join(name);
        fs::write(&path, &fresh).expect("write src/gen");
        assert_eq!(fs::read_to_string(&path).expect("read back"), fresh);
    }
}
