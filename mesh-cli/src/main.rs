//! `meshctl`: the operator CLI. `install`, `upgrade` and `uninstall` put the mesh on a
//! cluster (objects from `mesh_manifests`, shared with the Helm chart), `check` diagnoses,
//! `inject` and `uninject` add and remove the proxy in manifests or live workloads (the pod
//! changes come from `mesh_inject`, shared with the controller's webhook).

mod apply;
mod args;
mod check;
mod cluster;
mod documents;
mod error;
mod input;
mod install;
mod kinds;
mod live;
mod manifests;
mod progress;
mod summary;
mod target;
mod uninstall;
mod version;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use mesh_inject::{Context, Mode, Settings};

use args::{Cli, Command, CommonArgs, Format};
use summary::Operation;

/// The sidecar settings flags, which only `--manual` uses.
const SETTINGS_FLAGS: [(&str, &str); 6] = [
    ("proxy_image", "--proxy-image"),
    ("controller_addr", "--controller-addr"),
    ("trust_domain", "--trust-domain"),
    ("native_sidecar", "--native-sidecar"),
    ("init_container", "--init-container"),
    ("proxy_log_level", "--proxy-log-level"),
];

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let (op, inputs, common, settings) = match cli.command {
        Command::Inject(a) => {
            let mode = if a.manual {
                Mode::Manual
            } else {
                Mode::Annotate
            };
            if let (false, Some(("inject", sub))) = (a.manual, matches.subcommand()) {
                for (id, flag) in SETTINGS_FLAGS {
                    if sub.value_source(id) == Some(ValueSource::CommandLine) {
                        usage(
                            Operation::Inject(mode),
                            format!(
                                "{flag} shapes the sidecar that --manual writes; without --manual \
                                 inject only annotates and the webhook applies its own settings \
                                 (per workload, set the mesh.dev/ annotations instead, e.g. \
                                 mesh.dev/native-sidecar: \"false\")"
                            ),
                        );
                    }
                }
            }
            (
                Operation::Inject(mode),
                a.inputs,
                a.common,
                a.settings.settings(),
            )
        }
        Command::Uninject(a) => (Operation::Uninject, a.inputs, a.common, Settings::default()),
        Command::Install(a) => return ExitCode::from(install::install(a)),
        Command::Upgrade(a) => return ExitCode::from(install::upgrade(a)),
        Command::Uninstall(a) => return ExitCode::from(uninstall::run(a)),
        Command::Check(a) => return ExitCode::from(check::run(a)),
        Command::Version(a) => return ExitCode::from(version::run(a)),
        Command::Completion(a) => return ExitCode::from(version::completion(a)),
    };
    ExitCode::from(dispatch(op, inputs, common, settings))
}

/// A usage error: clap's message format and exit code 2.
fn usage(op: Operation, message: String) -> ! {
    let mut cmd = Cli::command();
    let sub = cmd
        .find_subcommand_mut(op.verb())
        .map(|c| c.clone())
        .unwrap_or(cmd);
    sub.bin_name(format!("meshctl {}", op.verb()))
        .error(ErrorKind::ArgumentConflict, message)
        .exit()
}

fn dispatch(op: Operation, inputs: Vec<String>, common: CommonArgs, settings: Settings) -> u8 {
    let mut targets = Vec::new();
    let mut files = Vec::new();
    for arg in inputs {
        match target::parse(&arg) {
            Some(Ok(t)) => targets.push(t),
            Some(Err(message)) => usage(op, message),
            None => files.push(arg),
        }
    }
    if files.iter().filter(|f| f.as_str() == "-").count() > 1 {
        usage(op, "stdin (-) can be read only once".into());
    }
    let live = common.all || !targets.is_empty();
    if live {
        if !files.is_empty() {
            usage(
                op,
                format!(
                    "give either manifests (FILE, DIR, -) or live workloads (KIND/NAME, --all), \
                     not both: {} is not a live workload",
                    files[0]
                ),
            );
        }
        if common.all && !targets.is_empty() {
            usage(op, "--all works on every workload of the namespace; drop the KIND/NAME arguments or --all".into());
        }
        if common.output.is_some() {
            usage(
                op,
                "-o/--output formats manifests; live workloads are patched (with --dry-run, shown as a YAML diff)".into(),
            );
        }
        let selection = if common.all {
            live::Selection::All
        } else {
            live::Selection::Named(targets)
        };
        return live::run(live::LiveRun {
            op,
            selection,
            namespace: common.namespace,
            kubeconfig: common.kubeconfig,
            context: common.context,
            dry_run: common.dry_run,
            settings,
        });
    }
    if files.is_empty() {
        usage(
            op,
            "nothing to read: give FILE, DIR or - (stdin), or live workloads as KIND/NAME or --all"
                .into(),
        );
    }
    for (flag, given) in [
        ("--dry-run", common.dry_run),
        ("--kubeconfig", common.kubeconfig.is_some()),
        ("--context", common.context.is_some()),
    ] {
        if given {
            usage(
                op,
                format!(
                    "{flag} applies to live workloads (KIND/NAME or --all); with manifests meshctl \
                     changes no file and writes only to stdout"
                ),
            );
        }
    }
    let ctx = Context {
        settings,
        default_namespace: common.namespace.unwrap_or_else(|| "default".into()),
        ..Context::default()
    };
    manifests::run(op, &files, common.output.unwrap_or(Format::Yaml), ctx)
}
