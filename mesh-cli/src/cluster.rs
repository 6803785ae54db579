//! The cluster meshctl talks to: a kube-rs client from the kubeconfig (as kubectl finds it:
//! `--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster), with errors that say which
//! file or setting to fix.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::Problem;

/// A current-thread runtime for one command, with the ring crypto provider installed (kube's
/// rustls client uses the process default); `None` after printing why there is none.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the I/O runtime: {e}");
            None
        }
    }
}

/// A connected client and the API server's URL (for messages).
pub struct Cluster {
    pub client: kube::Client,
    pub url: String,
}

/// A client for the cluster of the kubeconfig (and context), and the context's namespace.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(Cluster, String), Problem> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let subject = path.display().to_string();
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                Problem::input(
                    &subject,
                    format!("is not a usable kubeconfig: {e}; check the --kubeconfig path"),
                )
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| {
                    Problem::input(
                        &subject,
                        format!("is not a usable kubeconfig: {e}; check the file and --context"),
                    )
                })?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await.map_err(|e| {
            Problem::input(
                "kubeconfig",
                format!("{e}; check KUBECONFIG (or ~/.kube/config) and --context"),
            )
        })?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            Problem::input(
                "kubeconfig",
                format!(
                    "no cluster to talk to: {e}; give --kubeconfig, set KUBECONFIG, or write \
                     ~/.kube/config"
                ),
            )
        })?,
    };
    let url = config.cluster_url.to_string();
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config).map_err(|e| {
        Problem::input(
            &url,
            format!("cannot make a client for this cluster: {e}; check the kubeconfig"),
        )
    })?;
    Ok((Cluster { client, url }, namespace))
}
