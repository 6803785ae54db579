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

impl Cluster {
    /// A request to the API server that got no answer (connection, TLS, timeout).
    pub fn unreachable(&self, subject: &str, error: &kube::Error) -> Problem {
        Problem::input(
            subject,
            format!(
                "cannot reach the Kubernetes API server at {}: {error}; check --kubeconfig, \
                 --context and that the cluster is up",
                self.url
            ),
        )
    }
}

/// Why no client configuration could be made from the kubeconfig.
#[derive(Debug)]
pub enum ConfigError {
    /// The `--kubeconfig` file cannot be read or parsed, or lacks the `--context`.
    File {
        path: String,
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// `KUBECONFIG` (or `~/.kube/config`) cannot be used with the `--context`.
    Context(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// No kubeconfig and not in a pod.
    Nothing(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The client configuration of the kubeconfig as kubectl finds it (`--kubeconfig`, else
/// `KUBECONFIG`, `~/.kube/config`, in-cluster) and `--context`. The one place meshctl
/// decides where the cluster is; callers word the error and tune timeouts.
pub async fn load_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, ConfigError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file = |error: kube::config::KubeconfigError| ConfigError::File {
                path: path.display().to_string(),
                error: Box::new(error),
            };
            let parsed = Kubeconfig::read_from(path).map_err(file)?;
            kube::Config::from_custom_kubeconfig(parsed, &options)
                .await
                .map_err(file)
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| ConfigError::Context(Box::new(e))),
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| ConfigError::Nothing(Box::new(e))),
    }
}

/// A client for the cluster of the kubeconfig (and context), and the context's namespace.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(Cluster, String), Problem> {
    let config = load_config(kubeconfig, context)
        .await
        .map_err(|e| match e {
            ConfigError::File { path, error } => Problem::input(
                &path,
                format!(
                    "is not a usable kubeconfig: {error}; check the --kubeconfig path, the file and --context"
                ),
            ),
            ConfigError::Context(error) => Problem::input(
                "kubeconfig",
                format!("{error}; check KUBECONFIG (or ~/.kube/config) and --context"),
            ),
            ConfigError::Nothing(error) => Problem::input(
                "kubeconfig",
                format!(
                    "no cluster to talk to: {error}; give --kubeconfig, set KUBECONFIG, or write \
                     ~/.kube/config"
                ),
            ),
        })?;
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
