//! The command line: every `meshctl` subcommand, its flags and its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_inject::SettingsArgs;

/// Operator CLI of the mesh.
///
/// On a cluster: `meshctl check --pre`, then `meshctl install | kubectl apply -f -` (or
/// `meshctl install --apply`), then `meshctl check`. `meshctl inject` adds the mesh proxy to
/// workloads and `meshctl uninject` removes it, in manifests or live workloads;
/// `meshctl upgrade` and `meshctl uninstall` change or remove the installation.
#[derive(Parser, Debug)]
#[command(name = "meshctl", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Install(InstallArgs),
    Upgrade(UpgradeArgs),
    Uninstall(UninstallArgs),
    Check(crate::check::CheckArgs),
    Inject(InjectArgs),
    Uninject(UninjectArgs),
    Version(VersionArgs),
    Completion(CompletionArgs),
}

/// Render (or apply) every object the mesh needs on a cluster.
///
/// WHAT. The mesh's CRDs (and the Gateway API HTTPRoute and GRPCRoute CRDs), the namespace
/// (mesh-system), the controller's service account and RBAC, its Deployment (2 replicas,
/// leader election), Services and PodDisruptionBudget, the config object `mesh-config` that
/// holds the proxy and injection defaults the webhook reads, the mutating webhook
/// configuration with its serving certificate, and the identity Secret (trust anchor and
/// issuer).
///
/// CERTIFICATES. The trust anchor and issuer are generated unless given with
/// --identity-trust-anchor-file and --identity-issuer-cert-file/--identity-issuer-key-file.
/// A generated anchor's private key is not kept: rotate it later by giving a new anchor
/// (docs/identity.md). With --apply, the certificates of an existing installation are kept.
/// Printed output holds fresh certificates on every run: keep one rendering (or `-o values`)
/// when you need the same certificates again.
///
/// OUTPUT. By default the YAML goes to stdout, for `| kubectl apply -f -` or GitOps
/// (`-o json`: a List; `-o values`: the effective values, certificates included, for
/// `helm install -f`). --apply applies it with server-side apply (field manager meshctl),
/// then waits until the CRDs are established, the controller is available and the webhook
/// has endpoints. Running it again changes nothing.
///
/// VALUES. --set KEY=VALUE and -f FILE take the Helm chart's value names
/// (charts/mesh/values.yaml); files apply first, then --set, later ones winning. An
/// unknown key is an error that names the nearest valid one.
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Render (or apply) every object the mesh needs on a cluster"
)]
pub struct InstallArgs {
    #[command(flatten)]
    pub values: ValuesArgs,
    #[command(flatten)]
    pub identity: IdentityFileArgs,
    #[command(flatten)]
    pub apply: ApplyArgs,
    /// Output format when printing [default: yaml].
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<RenderFormat>,
}

/// Re-render the installed mesh for this version of meshctl (or with changed values).
///
/// Reads the installed values from the ConfigMap mesh-config and the certificates from the
/// identity and webhook Secrets (which are kept as they are), applies -f and --set on top,
/// and renders every object again with this version's images. Without --apply, prints the
/// YAML like `meshctl install`; with --apply, applies and waits. --reset-values starts from
/// this version's defaults instead of the installed values. Keys that this version does not
/// know are dropped, with a note. Needs the cluster (--kubeconfig, --context).
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Re-render the installed mesh for this version (or with changed values)"
)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub values: ValuesArgs,
    /// Start from this version's defaults instead of the installed values.
    #[arg(long)]
    pub reset_values: bool,
    #[command(flatten)]
    pub apply: ApplyArgs,
    /// Output format when printing [default: yaml].
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<RenderFormat>,
}

/// Print (or delete) everything `meshctl install` created.
///
/// Without --apply, prints the objects (for `kubectl delete -f -`). With --apply, deletes
/// them, the webhook configuration first (so that new pods stop being sent to it), then
/// every object labeled app.kubernetes.io/part-of=mesh of the installed kinds (also ones an
/// older version left), then the namespace (with the controller's Lease), and waits until
/// they are gone.
///
/// CRDs are kept unless --crds is given: deleting a CRD deletes every object of its kind in
/// every namespace (your Servers, AuthorizationPolicies, ... and, for the Gateway API CRDs,
/// every HTTPRoute and GRPCRoute). With --crds, the mesh's CRDs are deleted, and the Gateway
/// API CRDs only when the mesh installed them (labeled app.kubernetes.io/part-of=mesh).
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Print (or delete) everything meshctl install created"
)]
pub struct UninstallArgs {
    /// Also delete the CRDs, and with them every object of their kinds.
    #[arg(long)]
    pub crds: bool,
    /// The mesh's namespace.
    #[arg(long, value_name = "NAMESPACE", default_value = "mesh-system")]
    pub mesh_namespace: String,
    /// Delete the objects instead of printing them.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: how long to wait for the objects to be gone.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub wait_timeout: std::time::Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Print meshctl's version and, when a cluster is reachable, the control plane's.
#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Only the client's version (no cluster access).
    #[arg(long)]
    pub client: bool,
    /// The mesh's namespace.
    #[arg(long, value_name = "NAMESPACE", default_value = "mesh-system")]
    pub mesh_namespace: String,
    /// Output format [default: text].
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<VersionFormat>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Print a shell completion script.
///
/// bash: `source <(meshctl completion bash)` (or write it to
/// /etc/bash_completion.d/meshctl); zsh: `meshctl completion zsh > "${fpath[1]}/_meshctl"`;
/// fish: `meshctl completion fish > ~/.config/fish/completions/meshctl.fish`.
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Print a shell completion script (bash, zsh or fish)"
)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Shells `meshctl completion` writes scripts for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `meshctl version` output.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionFormat {
    Text,
    Json,
}

/// Values: `--set` and `-f`, with the Helm chart's names.
#[derive(Args, Debug, Clone)]
pub struct ValuesArgs {
    /// Set a value, e.g. --set controller.replicas=3 (the Helm chart's names; true, false,
    /// null and integers are typed, anything else is a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Values")]
    pub set: Vec<String>,
    /// A YAML values file in the shape of charts/mesh/values.yaml. Repeatable; applied in
    /// order, before --set.
    #[arg(
        short = 'f',
        long = "values",
        value_name = "FILE",
        help_heading = "Values"
    )]
    pub files: Vec<PathBuf>,
}

/// The identity certificates, when they are not to be generated.
#[derive(Args, Debug, Clone)]
pub struct IdentityFileArgs {
    /// PEM file of the trust anchor(s) proxies verify each other against.
    #[arg(long, value_name = "FILE", help_heading = "Identity")]
    pub identity_trust_anchor_file: Option<PathBuf>,
    /// PEM file of the issuer certificate (signed by the trust anchor).
    #[arg(
        long,
        value_name = "FILE",
        requires = "identity_issuer_key_file",
        help_heading = "Identity"
    )]
    pub identity_issuer_cert_file: Option<PathBuf>,
    /// PEM file of the issuer's private key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "identity_issuer_cert_file",
        help_heading = "Identity"
    )]
    pub identity_issuer_key_file: Option<PathBuf>,
}

/// Applying to the cluster.
#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// Apply to the cluster (server-side apply, field manager meshctl) instead of printing.
    #[arg(long, help_heading = "Cluster")]
    pub apply: bool,
    /// With --apply: how long to wait for the mesh to be ready.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration, help_heading = "Cluster")]
    pub wait_timeout: std::time::Duration,
    /// With --apply: return once the objects are written, without waiting.
    #[arg(long, help_heading = "Cluster")]
    pub no_wait: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Which cluster.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The kubeconfig file [default: $KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: its current context].
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub context: Option<String>,
}

/// How `install` and `upgrade` print.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderFormat {
    /// YAML documents separated by `---`.
    Yaml,
    /// One JSON List of every object.
    Json,
    /// The effective values (certificates included) as a Helm values file.
    Values,
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
