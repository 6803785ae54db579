//! The command line: `meshctl inject` and `meshctl uninject`, their flags and help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_inject::SettingsArgs;

/// Operator CLI of the mesh.
///
/// `meshctl inject` adds the mesh proxy to workloads, `meshctl uninject` removes it: in
/// manifests (files, directories, stdin) or in live workloads of a cluster.
#[derive(Parser, Debug)]
#[command(name = "meshctl", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Inject(InjectArgs),
    Uninject(UninjectArgs),
}

/// Add the mesh proxy to workloads, in manifests or live in the cluster.
///
/// MODES. By default inject annotates: it adds `mesh.dev/inject: enabled` to each
/// workload's pod template (to a Pod, and to a Namespace object), and the controller's
/// admission webhook adds the proxy when the pods are created. Later settings changes then
/// reach pods on their next restart. With --manual, inject writes the whole sidecar into
/// the pod template itself (the mesh-init init container, the mesh-proxy container and its
/// token volume), exactly as the webhook would; use it where the webhook does not run.
///
/// NATIVE SIDECAR OR FALLBACK. With --manual the proxy is by default a native sidecar: an
/// init container with restartPolicy: Always (Kubernetes 1.29 and later), so the app starts
/// after the proxy is ready and Jobs finish when their app does. With
/// --native-sidecar=false it is the first regular container, with a postStart hook that
/// waits for it to be ready. The annotation mesh.dev/native-sidecar on a workload or its
/// namespace overrides the flag.
///
/// INPUTS. Each FILE is read whatever its name; each DIR is read recursively, taking the
/// files ending in .yaml, .yml or .json in name order and skipping hidden files and
/// directories (names starting with a dot); `-` reads stdin. A file may hold several YAML
/// documents separated by `---`, JSON objects, and List kinds (each item is injected).
/// Namespace objects in the input give their annotations as defaults to the workloads in
/// that namespace; a document without metadata.namespace is in -n/--namespace.
///
/// OUTPUT. Every document goes to stdout in input order: YAML separated by `---` (keys keep
/// their order; comments are not kept), or with -o json one indented JSON object per
/// document. stderr gets one line per object (`deployment "web" injected`,
/// `service "web" skipped: not a workload`) and a summary. If any input is wrong, meshctl
/// prints the errors (file, document number, line and what to do), writes nothing to
/// stdout, and exits with 1.
///
/// LIVE WORKLOADS. `meshctl inject deploy/web -n shop` (kinds: deploy, sts, ds, rs, cronjob,
/// ns) or `meshctl inject --all -n shop` reads the workloads from the cluster (kubeconfig as
/// kubectl: --kubeconfig, KUBECONFIG, ~/.kube/config; --context), injects them with the
/// live Namespace's annotations as defaults, and patches them (a JSON patch that first tests
/// metadata.resourceVersion, so a concurrent change is never overwritten). --dry-run prints
/// a unified diff of each object instead of writing. Pods and Jobs cannot be injected in
/// place: their pod templates cannot be changed after creation.
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Add the mesh proxy to workloads, in manifests or live in the cluster"
)]
pub struct InjectArgs {
    /// Manifests (FILE, DIR, `-` for stdin) or live workloads (KIND/NAME).
    #[arg(value_name = "FILE|DIR|-|KIND/NAME")]
    pub inputs: Vec<String>,
    /// Write the whole sidecar into the pod template instead of annotating it for the
    /// admission webhook.
    #[arg(long)]
    pub manual: bool,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(
        flatten,
        next_help_heading = "Sidecar settings (only with --manual; the webhook has its own)"
    )]
    pub settings: SettingsArgs,
}

/// Remove the mesh proxy from workloads, in manifests or live in the cluster.
///
/// Removes exactly what `meshctl inject` (either mode) or the admission webhook added: the
/// `mesh.dev/inject: enabled` annotation (of pod templates, Pods and Namespaces), the
/// mesh-init and mesh-proxy containers, the proxy's token volume and the
/// mesh.dev/proxy-version annotation. Everything else is kept, `mesh.dev/inject: disabled`
/// too.
///
/// INPUTS. Each FILE is read whatever its name; each DIR is read recursively, taking the
/// files ending in .yaml, .yml or .json in name order and skipping hidden files and
/// directories; `-` reads stdin. Multi-document YAML, JSON objects and List kinds work.
///
/// OUTPUT. Every document goes to stdout in input order: YAML separated by `---` (keys keep
/// their order; comments are not kept), or with -o json one indented JSON object per
/// document. stderr gets one line per object and a summary. If any input is wrong, meshctl
/// prints the errors (file, document number, line and what to do), writes nothing to
/// stdout, and exits with 1.
///
/// LIVE WORKLOADS. `meshctl uninject deploy/web -n shop` or `meshctl uninject --all -n shop`
/// patches the workloads in the cluster (a JSON patch that first tests
/// metadata.resourceVersion); --dry-run prints a unified diff instead of writing.
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Remove the mesh proxy from workloads, in manifests or live in the cluster"
)]
pub struct UninjectArgs {
    /// Manifests (FILE, DIR, `-` for stdin) or live workloads (KIND/NAME).
    #[arg(value_name = "FILE|DIR|-|KIND/NAME")]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags shared by inject and uninject.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Output format of the manifests written to stdout [default: yaml].
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
    /// Namespace of documents (and live workloads) that name none. For manifests it
    /// defaults to "default"; for live workloads to the kubeconfig context's namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Every workload of the namespace in the cluster (Deployments, StatefulSets,
    /// DaemonSets, ReplicaSets, CronJobs; Jobs and workloads owned by another are reported
    /// and left alone).
    #[arg(long, help_heading = "Live workloads")]
    pub all: bool,
    /// Print a unified diff of each live object instead of changing it.
    #[arg(long, help_heading = "Live workloads")]
    pub dry_run: bool,
    /// The kubeconfig file [default: $KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long, value_name = "FILE", help_heading = "Live workloads")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: its current context].
    #[arg(long, value_name = "NAME", help_heading = "Live workloads")]
    pub context: Option<String>,
}

/// How manifests are written to stdout.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML documents separated by `---`.
    Yaml,
    /// One indented JSON object per document.
    Json,
}
