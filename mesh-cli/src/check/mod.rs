//! `meshctl check`: checks a cluster before the mesh is installed (`--pre`), the installed
//! control plane (default), and the proxies of meshed pods (`--proxy`), and says for each
//! problem what to do. Every check has a stable code (`MESH1xxx`, [`codes`]) documented in
//! docs/checks.md; output is text sections like `linkerd check` or JSON ([`report`]); the
//! exit code is 0 when nothing failed (warnings are fine), 1 otherwise, 2 for usage errors.

mod api;
mod certs;
mod cluster;
pub mod codes;
mod identity;
mod install;
mod pre;
mod proxies;
pub mod report;
mod version;
mod webhook;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Secret;

use codes::Category;
use report::{Outcome, Report, Section};

/// This meshctl's version, which the control plane and proxies should run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The annotation carrying the mesh version on CRDs, the Deployment and the ConfigMap.
pub const VERSION_ANNOTATION: &str = "mesh.dev/version";
/// The names of the installed objects, as `meshctl install` renders them: the controller's
/// Deployment, Service, Lease and ServiceAccount; the injector's webhook configuration; the
/// webhook and identity Secrets; the ConfigMap with the values and injection defaults.
pub use mesh_manifests::render::{
    CONFIG_MAP, CONTROLLER, IDENTITY_SECRET, WEBHOOK_CONFIGURATION, WEBHOOK_SECRET,
};
/// The label selector of the controller's pods.
pub const CONTROLLER_SELECTOR: &str = "app.kubernetes.io/name=mesh-controller";

/// Pause between runs with `--wait`.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Check the cluster, the installed mesh, or the proxies, and say how to fix what is wrong.
///
/// WHAT IS CHECKED. By default the installed control plane: the CRDs, the controller pods
/// and its leader, the admission webhook and its certificate, the trust anchors and issuer,
/// and the control plane's version. --pre checks a cluster before `meshctl install`
/// instead: permissions, an existing installation, another mesh's injector, Pod Security
/// levels that refuse mesh-init's capabilities, native sidecar support. --proxy adds the
/// proxies of meshed pods (in -n NAMESPACE, else in every namespace): ready, current
/// version, certificate valid and chaining to the trust anchors. The kubernetes-api section
/// (kubeconfig, API server, Kubernetes version) always runs first; when the API cannot be
/// reached nothing else runs.
///
/// OUTPUT. A section per category with a line per check (✔ passed, ‼ warning, ✖ failed;
/// [ok], [warn], [FAIL] with --no-color or when stdout is not a terminal); each warning and
/// failure has an indented line with what was found and one with the fix and the check's
/// code, e.g. `see docs/checks.md#mesh1202: ...`. -o json prints one JSON document instead:
/// {"success", "failures", "warnings", "categories": [{"name", "checks": [{"code",
/// "category", "description", "status": "ok"|"warning"|"error", "message", "hint"}],
/// "skipped"}], "notes"}.
///
/// EXIT CODE. 0 when no check failed (warnings do not fail), 1 when one did, 2 for a usage
/// error. --wait 5m runs the checks again every second until none fails or the time is up,
/// and prints the last run.
#[derive(Args, Debug, Clone)]
#[command(
    verbatim_doc_comment,
    about = "Check the cluster, the installed mesh, or the proxies, and say how to fix what is wrong"
)]
pub struct CheckArgs {
    /// Check a cluster before `meshctl install` instead of the installed mesh.
    #[arg(long, conflicts_with = "proxy")]
    pub pre: bool,
    /// Also check the proxies of meshed pods (in -n NAMESPACE, else in every namespace).
    #[arg(long)]
    pub proxy: bool,
    /// The namespace whose meshed pods --proxy checks [default: every namespace].
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The namespace the mesh is installed in.
    #[arg(long, value_name = "NAMESPACE", default_value = "mesh-system")]
    pub mesh_namespace: String,
    /// Run only this section (repeatable); kubernetes-api always runs first.
    #[arg(long = "category", value_enum, value_name = "NAME")]
    pub categories: Vec<Category>,
    /// Output format.
    #[arg(short, long, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    pub output: Output,
    /// Run the checks again until none fails or this much time has passed (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// ASCII marks ([ok], [warn], [FAIL]) and no colours, also on a terminal.
    #[arg(long)]
    pub no_color: bool,
    /// The kubeconfig file [default: $KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: its current context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// How results are printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Sections with a line per check, hints and a summary.
    Text,
    /// One JSON document.
    Json,
}

/// What every check needs.
pub(crate) struct Ctx {
    client: kube::Client,
    mesh_ns: String,
    proxy_ns: Option<String>,
    server_version: (u32, u32),
    now: SystemTime,
}

/// Runs `meshctl check`; returns the exit code.
pub fn run(args: CheckArgs) -> u8 {
    let categories = match selected(&args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}\n\nFor more information, try 'meshctl check --help'.");
            return 2;
        }
    };
    let Some(runtime) = crate::cluster::runtime() else {
        return 1;
    };
    let report = runtime.block_on(run_until(&args, &categories));
    match args.output {
        Output::Json => match serde_json::to_string_pretty(&report.json()) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot write the JSON report: {e}");
                return 1;
            }
        },
        Output::Text => {
            let fancy = !args.no_color
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal();
            print!("{}", report.text(fancy));
        }
    }
    u8::from(report.failures() > 0)
}

/// The sections to run, in print order.
fn selected(args: &CheckArgs) -> Result<Vec<Category>, String> {
    for (flag, ns) in [
        ("--mesh-namespace", Some(&args.mesh_namespace)),
        ("-n/--namespace", args.namespace.as_ref()),
    ] {
        if let Some(ns) = ns {
            if !crate::target::is_name(ns) {
                return Err(format!(
                    "{flag}: '{ns}' is not a namespace name (lowercase letters, digits and '-')"
                ));
            }
        }
    }
    let mut wanted: Vec<Category> = if !args.categories.is_empty() {
        if args.pre || args.proxy {
            return Err(
                "--category picks the sections itself; drop --pre/--proxy (e.g. --category \
                 pre-install, --category proxies)"
                    .into(),
            );
        }
        args.categories.clone()
    } else if args.pre {
        vec![Category::PreInstall]
    } else {
        let mut v = vec![
            Category::Install,
            Category::Webhook,
            Category::Identity,
            Category::Version,
        ];
        if args.proxy {
            v.push(Category::Proxies);
        }
        v
    };
    wanted.push(Category::KubernetesApi);
    let ordered: Vec<Category> = Category::ALL
        .into_iter()
        .filter(|c| wanted.contains(c))
        .collect();
    if args.namespace.is_some() && !ordered.contains(&Category::Proxies) {
        return Err(
            "-n/--namespace picks the pods whose proxies --proxy checks; add --proxy (the \
             namespace the mesh is installed in is --mesh-namespace)"
                .into(),
        );
    }
    Ok(ordered)
}

/// Runs until nothing fails or `--wait` is over; returns the last run's report.
async fn run_until(args: &CheckArgs, categories: &[Category]) -> Report {
    let deadline = args.wait.map(|w| Instant::now() + w);
    let mut last_failed: Option<Vec<&'static str>> = None;
    loop {
        let report = run_once(args, categories).await;
        let Some(deadline) = deadline else {
            return report;
        };
        let now = Instant::now();
        if report.failures() == 0 || now >= deadline {
            return report;
        }
        let failed = report.failed_codes();
        if last_failed.as_ref() != Some(&failed) {
            eprintln!(
                "waiting: {} check(s) failing ({}); retrying for up to {}s more",
                failed.len(),
                failed.join(", "),
                deadline.duration_since(now).as_secs()
            );
            last_failed = Some(failed);
        }
        tokio::time::sleep(RETRY_INTERVAL.min(deadline - now)).await;
    }
}

/// One run of the selected sections.
async fn run_once(args: &CheckArgs, categories: &[Category]) -> Report {
    let mut report = Report::default();
    let mut api_section = Section {
        category: Category::KubernetesApi,
        outcomes: Vec::new(),
        skipped: None,
    };
    let needs_api = "the other checks need the Kubernetes API and did not run".to_string();
    let connected = cluster::connect(args.kubeconfig.as_ref(), args.context.as_deref()).await;
    api_section.outcomes.push(api::client_outcome(&connected));
    let cluster = match connected {
        Ok(c) => c,
        Err(_) => {
            report.sections.push(api_section);
            report.notes.push(needs_api);
            return report;
        }
    };
    let server_version = match api::reach(&cluster).await {
        Ok((reached, version_outcome, version)) => {
            api_section.outcomes.push(reached);
            api_section.outcomes.push(version_outcome);
            version
        }
        Err(failed) => {
            api_section.outcomes.push(failed);
            report.sections.push(api_section);
            report.notes.push(needs_api);
            return report;
        }
    };
    report.sections.push(api_section);
    let ctx = Ctx {
        client: cluster.client,
        mesh_ns: args.mesh_namespace.clone(),
        proxy_ns: args.namespace.clone(),
        server_version,
        now: SystemTime::now(),
    };
    for category in categories {
        let mut outcomes: Vec<Outcome> = Vec::new();
        let skipped = match category {
            Category::KubernetesApi => continue,
            Category::PreInstall => {
                pre::run(&ctx, &mut outcomes).await;
                None
            }
            Category::Install => install::run(&ctx, &mut outcomes).await,
            Category::Webhook => webhook::run(&ctx, &mut outcomes).await,
            Category::Identity => identity::run(&ctx, &mut outcomes).await,
            Category::Version => version::run(&ctx, &mut outcomes).await,
            Category::Proxies => proxies::run(&ctx, &mut outcomes).await,
        };
        // A section that stopped early says so only when checks were left out.
        let ran = outcomes.len();
        let total = codes::ALL
            .iter()
            .filter(|c| c.category == *category)
            .count();
        report.sections.push(Section {
            category: *category,
            outcomes,
            skipped: skipped.filter(|_| ran < total),
        });
    }
    report
}

/// The text of a Secret key (UTF-8), or an error naming the key.
pub(crate) fn secret_text(secret: &Secret, key: &str) -> Result<String, String> {
    let name = secret.metadata.name.as_deref().unwrap_or("the Secret");
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {name} has no key {key}"))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| format!("key {key} of Secret {name} is not text"))
}
