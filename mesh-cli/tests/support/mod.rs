//! Runs the real `meshctl` binary and captures what it prints.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// What one run of meshctl did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `meshctl ARGS` in `dir` with `stdin` and the given extra environment.
pub fn meshctl_env(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "MESH_INJECT_PROXY_IMAGE",
        "MESH_INJECT_CONTROLLER_ADDR",
        "MESH_INJECT_TRUST_DOMAIN",
        "MESH_INJECT_NATIVE_SIDECAR",
        "MESH_INJECT_INIT_CONTAINER",
        "MESH_INJECT_PROXY_LOG_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs `meshctl ARGS` in `dir` with `stdin`.
pub fn meshctl(dir: &Path, args: &[&str], stdin: &str) -> Run {
    meshctl_env(dir, args, stdin, &[])
}

/// The YAML documents of a stream.
pub fn yaml_docs(s: &str) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(s)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .collect()
}

/// The names of a pod spec's containers under `key`.
pub fn names(spec: &serde_yaml_ng::Value, key: &str) -> Vec<String> {
    spec[key]
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
