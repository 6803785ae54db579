//! `meshctl version`: the client's version and, when the cluster answers, the control
//! plane's (the `version` of the installed `mesh-config`, and the controller Deployment's
//! `app.kubernetes.io/version` label); `meshctl completion`: shell completion scripts.

use std::time::Duration;

use clap::CommandFactory;
use serde_json::{json, Value};

use crate::apply;
use crate::args::{Cli, CompletionArgs, Shell, VersionArgs, VersionFormat};
use crate::cluster;
use crate::kinds::Kind;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn run(args: VersionArgs) -> u8 {
    let server = if args.client {
        None
    } else {
        Some(control_plane(&args))
    };
    match args.output.unwrap_or(VersionFormat::Text) {
        VersionFormat::Json => {
            let mut out = json!({"client": VERSION});
            match &server {
                Some(Ok(v)) => out["controlPlane"] = json!(v),
                Some(Err(e)) => out["controlPlaneError"] = json!(e),
                None => {}
            }
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        VersionFormat::Text => {
            println!("client: {VERSION}");
            match &server {
                Some(Ok(v)) => println!("control plane: {v}"),
                Some(Err(e)) => println!("control plane: unavailable ({e})"),
                None => {}
            }
        }
    }
    0
}

/// The installed version, or why it cannot be read.
fn control_plane(args: &VersionArgs) -> Result<String, String> {
    let runtime = cluster::runtime().ok_or("cannot start the I/O runtime")?;
    runtime.block_on(async {
        let lookup = async {
            let (cluster, _) = cluster::connect(
                args.cluster.kubeconfig.as_deref(),
                args.cluster.context.as_deref(),
            )
            .await
            .map_err(|p| p.to_string())?;
            let cm = Kind::of(&json!({"apiVersion": "v1", "kind": "ConfigMap"}))
                .ok_or("the ConfigMap kind is missing from meshctl's table")?;
            let deploy = Kind::of(&json!({"apiVersion": "apps/v1", "kind": "Deployment"}))
                .ok_or("the Deployment kind is missing from meshctl's table")?;
            let ns = &args.mesh_namespace;
            let config = apply::get(&cluster, cm, ns, mesh_manifests::render::CONFIG_MAP)
                .await
                .map_err(|p| p.to_string())?;
            let Some(config) = config else {
                return Err(format!("the mesh is not installed in namespace \"{ns}\""));
            };
            let installed = config
                .pointer("/data/version")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            let running = apply::get(&cluster, deploy, ns, mesh_manifests::render::CONTROLLER)
                .await
                .map_err(|p| p.to_string())?
                .and_then(|d| {
                    d.pointer("/metadata/labels/app.kubernetes.io~1version")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
            Ok(match running {
                Some(r) if r != installed => format!("{installed} (controller Deployment at {r})"),
                _ => installed,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), lookup)
            .await
            .map_err(|_| "the API server did not answer within 10s".to_string())?
    })
}

pub fn completion(args: CompletionArgs) -> u8 {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "meshctl", &mut std::io::stdout());
    0
}
