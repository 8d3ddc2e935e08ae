//! Embeds the git revision for `--version`. Image builds without `.git` pass `GIT_REVISION`.
//! With the `scaler` feature, also generates KEDA's external scaler gRPC code from
//! `proto/externalscaler.proto` with a vendored `protoc` (no system protobuf compiler needed).
use std::process::Command;

fn main() {
    #[cfg(feature = "scaler")]
    {
        println!("cargo:rerun-if-changed=proto/externalscaler.proto");
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this host");
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc);
        tonic_prost_build::configure()
            .build_transport(false)
            .compile_with_config(config, &["proto/externalscaler.proto"], &["proto"])
            .expect("compile proto/externalscaler.proto");
    }
    println!("cargo:rerun-if-env-changed=GIT_REVISION");
    let from_env = std::env::var("GIT_REVISION").ok().filter(|v| !v.is_empty());
    let rev = from_env.or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !dir.is_empty() {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/refs/heads");
        }
    }
    println!(
        "cargo:rustc-env=KEDA_CONNECTOR_REVISION={}",
        rev.unwrap_or_else(|| "unknown".to_owned())
    );
}
