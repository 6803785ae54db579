//! `mesh-proxy init`: installs (or, with `--remove`, deletes) the `nat`-table iptables rules that
//! send a pod's TCP traffic through the proxy, like linkerd2-proxy-init or istio-init.
//!
//! The pipeline is split so that everything but the last step is pure and unit-tested without
//! root: [`InitArgs`] (raw flag/env strings) → [`InitArgs::validate`] (reports *every* bad value
//! at once) → [`Config`] → [`plan`] (the iptables argv vectors, as [`Step`]s whose guards make the
//! result idempotent) → [`execute`] through a [`Runner`] (or [`render_script`] for `--dry-run`).
//! User documentation: `docs/init.md`.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// Chain holding the inbound rules; jumped to from `PREROUTING`.
pub const INBOUND_CHAIN: &str = "MESH_PROXY_INBOUND";
/// Chain holding the outbound rules; jumped to from `OUTPUT`.
pub const OUTPUT_CHAIN: &str = "MESH_PROXY_OUTPUT";
/// The iptables table every rule lives in.
pub const TABLE: &str = "nat";

/// Upper bound on how many duplicate jumps `--remove` deletes before giving up (a guard against a
/// misbehaving iptables binary that reports success for `-D` without deleting anything).
const MAX_REPEAT: usize = 64;

/// Flags of `mesh-proxy init`. Every flag can also be given as an environment variable.
///
/// Numbers are taken as strings so that [`InitArgs::validate`] can report every bad value at once
/// instead of clap stopping at the first one.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Port the proxy accepts redirected inbound connections on.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_INBOUND_PORT",
        default_value = "4143",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub inbound_port: String,

    /// Port the proxy accepts redirected outbound connections on.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_OUTBOUND_PORT",
        default_value = "4140",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub outbound_port: String,

    /// The proxy's admin port (metrics, health checks); never redirected.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_ADMIN_PORT",
        default_value = "4191",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub admin_port: String,

    /// UID the proxy runs as. Its own outbound connections are not redirected (this is what
    /// prevents a redirect loop), so it must be a dedicated, non-root UID.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_PROXY_UID",
        default_value = "2102",
        value_name = "UID",
        allow_negative_numbers = true
    )]
    pub proxy_uid: String,

    /// Inbound destination ports that bypass the proxy, comma-separated; ranges as `8000-8100`.
    /// The inbound and admin ports are always skipped.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_SKIP_INBOUND_PORTS",
        value_delimiter = ',',
        value_name = "PORTS",
        allow_negative_numbers = true
    )]
    pub skip_inbound_ports: Vec<String>,

    /// Outbound destination ports that bypass the proxy, comma-separated; ranges as `8000-8100`.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_SKIP_OUTBOUND_PORTS",
        value_delimiter = ',',
        value_name = "PORTS",
        allow_negative_numbers = true
    )]
    pub skip_outbound_ports: Vec<String>,

    /// Outbound destination IPv4 networks that bypass the proxy, comma-separated CIDRs such as
    /// `10.0.0.0/8` (a bare address means `/32`).
    #[arg(
        long,
        env = "MESH_PROXY_INIT_SKIP_OUTBOUND_CIDRS",
        value_delimiter = ',',
        value_name = "CIDRS"
    )]
    pub skip_outbound_cidrs: Vec<String>,

    /// iptables binary to run, e.g. `iptables-legacy` or `/usr/sbin/iptables-nft`.
    #[arg(
        long,
        env = "MESH_PROXY_INIT_IPTABLES_CMD",
        default_value = "iptables",
        value_name = "CMD"
    )]
    pub iptables_cmd: String,

    /// Delete the jumps and chains installed by `init` instead of installing them (idempotent).
    #[arg(long, env = "MESH_PROXY_INIT_REMOVE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub remove: bool,

    /// Print the commands (as a shell script) instead of running them; needs no privileges.
    #[arg(long, env = "MESH_PROXY_INIT_DRY_RUN", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,
}

/// What `init` does with the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the chains, (re)fill them and add the jumps.
    Install,
    /// Delete the jumps and the chains.
    Remove,
}

/// Validated input of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Program run for every command (`argv[0]`).
    pub iptables_cmd: String,
    /// Redirect target of inbound TCP.
    pub inbound_port: u16,
    /// Redirect target of outbound TCP.
    pub outbound_port: u16,
    /// The proxy's admin port.
    pub admin_port: u16,
    /// UID whose connections are never redirected.
    pub proxy_uid: u32,
    /// Effective inbound skip list: the inbound port, the admin port, then the user's ports
    /// (duplicates removed, order kept).
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports that are not redirected.
    pub skip_outbound_ports: Vec<PortRange>,
    /// Outbound destination networks that are not redirected (normalized, deduplicated).
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Install or remove.
    pub mode: Mode,
    /// Print instead of run.
    pub dry_run: bool,
}

/// An inclusive TCP port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port (>= 1).
    pub first: u16,
    /// Last port (>= `first`).
    pub last: u16,
}

impl PortRange {
    /// A range of one port.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
}

/// Rendered in iptables' `--dport` syntax: `80` or `8000:8100`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An IPv4 network with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One bad input value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The flag, e.g. `--inbound-port`.
    pub flag: &'static str,
    /// The environment variable the flag can also be read from.
    pub env: &'static str,
    /// The offending value as given.
    pub value: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (env {}) = {:?}: {}",
            self.flag, self.env, self.value, self.message
        )
    }
}

/// Every bad value found by [`InitArgs::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidArgs {
    /// The problems, in flag order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for InvalidArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid arguments for `mesh-proxy init` ({n} problem{}); nothing was changed:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

const PORT_HINT: &str = "use an integer from 1 to 65535";

/// Flag metadata used in [`Problem`]s.
struct Flag {
    name: &'static str,
    env: &'static str,
}

const F_INBOUND: Flag = Flag {
    name: "--inbound-port",
    env: "MESH_PROXY_INIT_INBOUND_PORT",
};
const F_OUTBOUND: Flag = Flag {
    name: "--outbound-port",
    env: "MESH_PROXY_INIT_OUTBOUND_PORT",
};
const F_ADMIN: Flag = Flag {
    name: "--admin-port",
    env: "MESH_PROXY_INIT_ADMIN_PORT",
};
const F_UID: Flag = Flag {
    name: "--proxy-uid",
    env: "MESH_PROXY_INIT_PROXY_UID",
};
const F_SKIP_IN: Flag = Flag {
    name: "--skip-inbound-ports",
    env: "MESH_PROXY_INIT_SKIP_INBOUND_PORTS",
};
const F_SKIP_OUT: Flag = Flag {
    name: "--skip-outbound-ports",
    env: "MESH_PROXY_INIT_SKIP_OUTBOUND_PORTS",
};
const F_SKIP_CIDRS: Flag = Flag {
    name: "--skip-outbound-cidrs",
    env: "MESH_PROXY_INIT_SKIP_OUTBOUND_CIDRS",
};
const F_CMD: Flag = Flag {
    name: "--iptables-cmd",
    env: "MESH_PROXY_INIT_IPTABLES_CMD",
};

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, flag: &Flag, value: &str, message: impl Into<String>) {
        self.0.push(Problem {
            flag: flag.name,
            env: flag.env,
            value: value.to_string(),
            message: message.into(),
        });
    }
}

/// Parses a port (1..=65535).
fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err(format!("port 0 is not usable; {PORT_HINT}")),
        Ok(p) => u16::try_from(p).map_err(|_| format!("{p} is too large for a port; {PORT_HINT}")),
        Err(_) => Err(format!("not a port number; {PORT_HINT}")),
    }
}

/// Parses `80`, `8000-8100` or `8000:8100`.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let s = s.trim();
    match s.split_once(['-', ':']) {
        None => parse_port(s).map(PortRange::single),
        Some((a, b)) => {
            let first = parse_port(a)
                .map_err(|e| format!("bad start of range: {e}; write ranges as 8000-8100"))?;
            let last = parse_port(b)
                .map_err(|e| format!("bad end of range: {e}; write ranges as 8000-8100"))?;
            if first > last {
                return Err(format!(
                    "range starts after it ends; write it as {last}-{first}"
                ));
            }
            Ok(PortRange { first, last })
        }
    }
}

/// Parses an IPv4 CIDR (`10.0.0.0/8`) or a bare address (`/32`), clearing host bits.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    const HINT: &str = "use an IPv4 network such as 10.0.0.0/8 or an address such as 10.1.2.3";
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        None => (s, "32"),
        Some((a, p)) => (a, p),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| {
        if addr.contains(':') {
            format!("IPv6 is not supported by `init` (IPv4 nat rules only); {HINT}")
        } else {
            format!("not an IPv4 address; {HINT}")
        }
    })?;
    let prefix: u8 = match prefix.parse::<u8>() {
        Ok(p) if p <= 32 => p,
        _ => return Err(format!("prefix length must be 0 to 32; {HINT}")),
    };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ok(Cidr {
        addr: Ipv4Addr::from(u32::from(addr) & mask),
        prefix,
    })
}

/// Splits list flags further on whitespace (so `"80 443"` in an env var works too) and drops
/// empty items (so an empty env var means "none").
fn list_items(values: &[String]) -> impl Iterator<Item = &str> {
    values.iter().flat_map(|v| v.split_whitespace())
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

impl InitArgs {
    /// Checks every value and returns the validated [`Config`], or *all* problems found.
    pub fn validate(&self) -> Result<Config, InvalidArgs> {
        let mut problems = Problems::default();
        let port = |flag: &Flag, value: &str, problems: &mut Problems| match parse_port(value) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(flag, value, e);
                None
            }
        };
        let inbound = port(&F_INBOUND, &self.inbound_port, &mut problems);
        let outbound = port(&F_OUTBOUND, &self.outbound_port, &mut problems);
        let admin = port(&F_ADMIN, &self.admin_port, &mut problems);

        if let (Some(i), Some(o)) = (inbound, outbound) {
            if i == o {
                problems.push(
                    &F_OUTBOUND,
                    &self.outbound_port,
                    format!("must differ from --inbound-port ({i}); the proxy listens on both"),
                );
            }
        }
        if let Some(a) = admin {
            for (other, name) in [(inbound, "--inbound-port"), (outbound, "--outbound-port")] {
                if other == Some(a) {
                    problems.push(
                        &F_ADMIN,
                        &self.admin_port,
                        format!("must differ from {name} ({a})"),
                    );
                }
            }
        }

        let uid_hint = "use the numeric UID the proxy container runs as (default 2102)";
        let proxy_uid = match self.proxy_uid.trim().parse::<u32>() {
            Ok(0) => {
                problems.push(
                    &F_UID,
                    &self.proxy_uid,
                    format!(
                        "UID 0 would exempt every root process from the mesh; run the proxy as a \
                         dedicated non-root UID and pass it here ({uid_hint})"
                    ),
                );
                None
            }
            Ok(u32::MAX) => {
                problems.push(
                    &F_UID,
                    &self.proxy_uid,
                    format!("4294967295 is not a valid UID; {uid_hint}"),
                );
                None
            }
            Ok(u) => Some(u),
            Err(_) => {
                problems.push(
                    &F_UID,
                    &self.proxy_uid,
                    format!("not a numeric UID; {uid_hint}"),
                );
                None
            }
        };

        let mut skip_inbound_ports = Vec::new();
        for p in [inbound, admin].into_iter().flatten() {
            push_unique(&mut skip_inbound_ports, PortRange::single(p));
        }
        for item in list_items(&self.skip_inbound_ports) {
            match parse_port_range(item) {
                Ok(r) => push_unique(&mut skip_inbound_ports, r),
                Err(e) => problems.push(&F_SKIP_IN, item, e),
            }
        }

        let mut skip_outbound_ports = Vec::new();
        for item in list_items(&self.skip_outbound_ports) {
            match parse_port_range(item) {
                Ok(r) => push_unique(&mut skip_outbound_ports, r),
                Err(e) => problems.push(&F_SKIP_OUT, item, e),
            }
        }

        let mut skip_outbound_cidrs = Vec::new();
        for item in list_items(&self.skip_outbound_cidrs) {
            match parse_cidr(item) {
                Ok(c) => push_unique(&mut skip_outbound_cidrs, c),
                Err(e) => problems.push(&F_SKIP_CIDRS, item, e),
            }
        }

        let cmd = self.iptables_cmd.trim();
        if cmd.is_empty() {
            problems.push(
                &F_CMD,
                &self.iptables_cmd,
                "is empty; name the iptables binary, e.g. iptables or /usr/sbin/iptables-legacy",
            );
        } else if cmd.chars().any(char::is_whitespace) {
            problems.push(
                &F_CMD,
                &self.iptables_cmd,
                "must be a single program name or path without arguments, e.g. iptables-legacy \
                 (the table and rule arguments are added by init)",
            );
        }

        if !problems.0.is_empty() {
            return Err(InvalidArgs {
                problems: problems.0,
            });
        }
        match (inbound, outbound, admin, proxy_uid) {
            (Some(inbound_port), Some(outbound_port), Some(admin_port), Some(proxy_uid)) => {
                Ok(Config {
                    iptables_cmd: cmd.to_string(),
                    inbound_port,
                    outbound_port,
                    admin_port,
                    proxy_uid,
                    skip_inbound_ports,
                    skip_outbound_ports,
                    skip_outbound_cidrs,
                    mode: if self.remove {
                        Mode::Remove
                    } else {
                        Mode::Install
                    },
                    dry_run: self.dry_run,
                })
            }
            // Unreachable: a `None` above always comes with a problem. Kept total anyway.
            _ => Err(InvalidArgs {
                problems: Vec::new(),
            }),
        }
    }
}

/// One command line: `argv[0]` is the iptables binary.
pub type Argv = Vec<String>;

/// One step of a [`plan`]. Guarded steps run a *check* command (`iptables -C …` or
/// `iptables -S CHAIN`) whose exit status means: 0 = present, 1 = absent, anything else = error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run the command; it must succeed.
    Run(Argv),
    /// Run `then` only if `check` says absent (e.g. create a missing chain, add a missing jump).
    IfAbsent {
        /// The check command.
        check: Argv,
        /// Steps run when absent.
        then: Vec<Step>,
    },
    /// Run `then` only if `check` says present (e.g. delete an existing chain).
    IfPresent {
        /// The check command.
        check: Argv,
        /// Steps run when present.
        then: Vec<Step>,
    },
    /// Run `then` again as long as `check` says present (e.g. delete every copy of a jump).
    WhilePresent {
        /// The check command.
        check: Argv,
        /// Steps run on each iteration.
        then: Vec<Step>,
    },
}

/// Builds `[cmd, "-t", "nat", args…]`.
fn ipt(cfg: &Config, args: &[&str]) -> Argv {
    let mut v = vec![cfg.iptables_cmd.clone(), "-t".into(), TABLE.into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// The chains `init` owns, with the built-in chain that jumps to each.
fn chains() -> [(&'static str, &'static str); 2] {
    [(INBOUND_CHAIN, "PREROUTING"), (OUTPUT_CHAIN, "OUTPUT")]
}

/// The rules of `chain`, as the arguments after `-A chain`.
pub fn chain_rules(cfg: &Config, chain: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut rules = Vec::new();
    if chain == INBOUND_CHAIN {
        for p in &cfg.skip_inbound_ports {
            rules.push(s(&["-p", "tcp", "--dport", &p.to_string(), "-j", "RETURN"]));
        }
        rules.push(s(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.inbound_port.to_string(),
        ]));
    } else {
        rules.push(s(&[
            "-m",
            "owner",
            "--uid-owner",
            &cfg.proxy_uid.to_string(),
            "-j",
            "RETURN",
        ]));
        rules.push(s(&["-o", "lo", "-j", "RETURN"]));
        rules.push(s(&["-d", "127.0.0.0/8", "-j", "RETURN"]));
        for p in &cfg.skip_outbound_ports {
            rules.push(s(&["-p", "tcp", "--dport", &p.to_string(), "-j", "RETURN"]));
        }
        for c in &cfg.skip_outbound_cidrs {
            rules.push(s(&["-d", &c.to_string(), "-j", "RETURN"]));
        }
        rules.push(s(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.outbound_port.to_string(),
        ]));
    }
    rules
}

/// Turns a validated config into the steps to run. Pure.
///
/// Install, per chain: create the chain if `-S CHAIN` says it is missing, flush it, append its
/// rules, and append the jump from the built-in chain unless `-C` finds it. Running it twice
/// therefore leaves exactly one copy of everything.
///
/// Remove, per chain that exists: delete every jump to it, flush it, delete it. Nothing to do
/// when the chain is absent, so removing twice succeeds.
pub fn plan(cfg: &Config) -> Vec<Step> {
    let mut steps = Vec::new();
    for (chain, parent) in chains() {
        let exists = ipt(cfg, &["-S", chain]);
        let jump = |op: &str| ipt(cfg, &[op, parent, "-j", chain]);
        match cfg.mode {
            Mode::Install => {
                steps.push(Step::IfAbsent {
                    check: exists,
                    then: vec![Step::Run(ipt(cfg, &["-N", chain]))],
                });
                steps.push(Step::Run(ipt(cfg, &["-F", chain])));
                for rule in chain_rules(cfg, chain) {
                    let mut argv = ipt(cfg, &["-A", chain]);
                    argv.extend(rule);
                    steps.push(Step::Run(argv));
                }
                steps.push(Step::IfAbsent {
                    check: jump("-C"),
                    then: vec![Step::Run(jump("-A"))],
                });
            }
            Mode::Remove => steps.push(Step::IfPresent {
                check: exists,
                then: vec![
                    Step::WhilePresent {
                        check: jump("-C"),
                        then: vec![Step::Run(jump("-D"))],
                    },
                    Step::Run(ipt(cfg, &["-F", chain])),
                    Step::Run(ipt(cfg, &["-X", chain])),
                ],
            }),
        }
    }
    steps
}

/// Quotes one word for a POSIX shell (bare when it only has safe characters).
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:,=+@%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders the plan as a POSIX shell script (the `--dry-run` output). Pure.
pub fn render_script(steps: &[Step]) -> String {
    fn go(out: &mut String, steps: &[Step], depth: usize) {
        let pad = "  ".repeat(depth);
        for step in steps {
            let (head, check, then, end) = match step {
                Step::Run(argv) => {
                    out.push_str(&format!("{pad}{}\n", shell_line(argv)));
                    continue;
                }
                Step::IfAbsent { check, then } => ("if !", check, then, "fi"),
                Step::IfPresent { check, then } => ("if", check, then, "fi"),
                Step::WhilePresent { check, then } => ("while", check, then, "done"),
            };
            let kw = if end == "fi" { "then" } else { "do" };
            out.push_str(&format!(
                "{pad}{head} {} >/dev/null 2>&1; {kw}\n",
                shell_line(check)
            ));
            go(out, then, depth + 1);
            out.push_str(&format!("{pad}{end}\n"));
        }
    }
    let mut out = String::from(
        "#!/bin/sh\n# mesh-proxy init --dry-run: the commands init would run\nset -e\n",
    );
    go(&mut out, steps, 0);
    out
}

/// Result of running one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

/// Runs commands; the seam that lets [`execute`] be tested against a fake iptables.
pub trait Runner {
    /// Runs `argv` to completion. `Err` means it could not be started.
    fn run(&mut self, argv: &[String]) -> io::Result<Outcome>;
}

/// Runs commands as child processes.
#[derive(Debug, Default)]
pub struct ProcessRunner;

impl Runner for ProcessRunner {
    fn run(&mut self, argv: &[String]) -> io::Result<Outcome> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let out = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok(Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn status_text(code: Option<i32>) -> String {
    code.map_or_else(
        || "killed by a signal".into(),
        |c| format!("exit status {c}"),
    )
}

/// Runs one command, turning start failures into actionable errors.
fn start(runner: &mut dyn Runner, argv: &[String]) -> anyhow::Result<Outcome> {
    tracing::debug!(command = %shell_line(argv), "mesh-proxy init: running");
    runner.run(argv).map_err(|e| {
        let prog = argv.first().map_or("", String::as_str);
        if e.kind() == io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "the iptables command `{prog}` was not found; install it (Debian/Ubuntu: \
                 `apt-get install -y iptables`) or point --iptables-cmd \
                 (MESH_PROXY_INIT_IPTABLES_CMD) at the binary"
            )
        } else {
            anyhow::Error::new(e).context(format!(
                "could not start `{prog}`; check --iptables-cmd (MESH_PROXY_INIT_IPTABLES_CMD)"
            ))
        }
    })
}

fn failed(argv: &[String], out: &Outcome) -> anyhow::Error {
    let mut msg = format!("`{}` failed ({})", shell_line(argv), status_text(out.code));
    let stderr = out.stderr.trim();
    if !stderr.is_empty() {
        msg.push_str(": ");
        msg.push_str(stderr);
    }
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("xtables lock") {
        msg.push_str(
            "\nhint: another program is changing iptables rules at the same time; run init again",
        );
    } else if lower.contains("permission denied")
        || lower.contains("must be root")
        || lower.contains("operation not permitted")
    {
        msg.push_str(
            "\nhint: mesh-proxy init must run as root or with CAP_NET_ADMIN and CAP_NET_RAW \
             (Kubernetes: securityContext.capabilities.add: [NET_ADMIN, NET_RAW])",
        );
    }
    anyhow::anyhow!(msg)
}

/// Runs a check command: `Ok(true)` = present (exit 0), `Ok(false)` = absent (exit 1).
fn check(runner: &mut dyn Runner, argv: &[String]) -> anyhow::Result<bool> {
    let out = start(runner, argv)?;
    match out.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(argv, &out)),
    }
}

/// Runs the steps in order, stopping at the first failure.
pub fn execute(runner: &mut dyn Runner, steps: &[Step]) -> anyhow::Result<()> {
    for step in steps {
        match step {
            Step::Run(argv) => {
                let out = start(runner, argv)?;
                if out.code != Some(0) {
                    return Err(failed(argv, &out));
                }
            }
            Step::IfAbsent { check: c, then } => {
                if !check(runner, c)? {
                    execute(runner, then)?;
                }
            }
            Step::IfPresent { check: c, then } => {
                if check(runner, c)? {
                    execute(runner, then)?;
                }
            }
            Step::WhilePresent { check: c, then } => {
                let mut n = 0;
                while check(runner, c)? {
                    n += 1;
                    if n > MAX_REPEAT {
                        anyhow::bail!(
                            "`{}` still succeeds after {MAX_REPEAT} deletions; giving up",
                            shell_line(c)
                        );
                    }
                    execute(runner, then)?;
                }
            }
        }
    }
    Ok(())
}

/// Checks that the iptables binary runs and the `nat` table is usable before changing anything,
/// so permission or missing-binary problems are reported up front with a hint.
pub fn preflight(runner: &mut dyn Runner, cfg: &Config) -> anyhow::Result<()> {
    let argv = ipt(cfg, &["-S"]);
    let out = start(runner, &argv)?;
    if out.code != Some(0) {
        return Err(failed(&argv, &out)).context("cannot use the iptables nat table");
    }
    Ok(())
}

/// Validates, plans and applies (or prints) the rules with the given runner. Returns the
/// message to show on success.
pub fn run_with(args: &InitArgs, runner: &mut dyn Runner) -> anyhow::Result<String> {
    let cfg = args.validate()?;
    let steps = plan(&cfg);
    if cfg.dry_run {
        return Ok(render_script(&steps));
    }
    preflight(runner, &cfg)?;
    execute(runner, &steps)?;
    fn join<T: fmt::Display>(items: &[T]) -> String {
        items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
    Ok(match cfg.mode {
        Mode::Install => {
            let mut outbound_skips = format!("uid {}, loopback", cfg.proxy_uid);
            if !cfg.skip_outbound_ports.is_empty() {
                outbound_skips += &format!(", ports {}", join(&cfg.skip_outbound_ports));
            }
            if !cfg.skip_outbound_cidrs.is_empty() {
                outbound_skips += &format!(", networks {}", join(&cfg.skip_outbound_cidrs));
            }
            format!(
                "mesh-proxy init: installed nat chains {INBOUND_CHAIN} and {OUTPUT_CHAIN}: \
                 inbound TCP -> port {} (except ports {}), outbound TCP -> port {} (except {})\n",
                cfg.inbound_port,
                join(&cfg.skip_inbound_ports),
                cfg.outbound_port,
                outbound_skips,
            )
        }
        Mode::Remove => format!(
            "mesh-proxy init: removed nat chains {INBOUND_CHAIN} and {OUTPUT_CHAIN} and their \
             jumps (if they were present)\n"
        ),
    })
}

/// Entry point of `mesh-proxy init`.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let msg = run_with(args, &mut ProcessRunner)?;
    print!("{msg}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeMap;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn args(flags: &[&str]) -> InitArgs {
        let mut argv = vec!["init"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.args,
            Err(e) => panic!("clap rejected {flags:?}: {e}"),
        }
    }

    fn cfg(flags: &[&str]) -> Config {
        match args(flags).validate() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn problems(flags: &[&str]) -> Vec<Problem> {
        match args(flags).validate() {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(e) => e.problems,
        }
    }

    fn lines(steps: &[Step]) -> Vec<String> {
        fn go(out: &mut Vec<String>, steps: &[Step], prefix: &str) {
            for s in steps {
                match s {
                    Step::Run(a) => out.push(format!("{prefix}{}", a[1..].join(" "))),
                    Step::IfAbsent { check, then } => {
                        out.push(format!("{prefix}unless {}", check[1..].join(" ")));
                        go(out, then, &format!("{prefix}  "));
                    }
                    Step::IfPresent { check, then } => {
                        out.push(format!("{prefix}if {}", check[1..].join(" ")));
                        go(out, then, &format!("{prefix}  "));
                    }
                    Step::WhilePresent { check, then } => {
                        out.push(format!("{prefix}while {}", check[1..].join(" ")));
                        go(out, then, &format!("{prefix}  "));
                    }
                }
            }
        }
        let mut out = Vec::new();
        go(&mut out, steps, "");
        out
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]);
        assert_eq!(c.iptables_cmd, "iptables");
        assert_eq!(
            (c.inbound_port, c.outbound_port, c.admin_port, c.proxy_uid),
            (4143, 4140, 4191, 2102)
        );
        assert_eq!(
            c.skip_inbound_ports,
            vec![PortRange::single(4143), PortRange::single(4191)]
        );
        assert!(c.skip_outbound_ports.is_empty() && c.skip_outbound_cidrs.is_empty());
        assert_eq!((c.mode, c.dry_run), (Mode::Install, false));
    }

    #[test]
    fn install_plan_with_defaults() {
        assert_eq!(
            lines(&plan(&cfg(&[]))),
            [
                "unless -t nat -S MESH_PROXY_INBOUND",
                "  -t nat -N MESH_PROXY_INBOUND",
                "-t nat -F MESH_PROXY_INBOUND",
                "-t nat -A MESH_PROXY_INBOUND -p tcp --dport 4143 -j RETURN",
                "-t nat -A MESH_PROXY_INBOUND -p tcp --dport 4191 -j RETURN",
                "-t nat -A MESH_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "unless -t nat -C PREROUTING -j MESH_PROXY_INBOUND",
                "  -t nat -A PREROUTING -j MESH_PROXY_INBOUND",
                "unless -t nat -S MESH_PROXY_OUTPUT",
                "  -t nat -N MESH_PROXY_OUTPUT",
                "-t nat -F MESH_PROXY_OUTPUT",
                "-t nat -A MESH_PROXY_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-t nat -A MESH_PROXY_OUTPUT -o lo -j RETURN",
                "-t nat -A MESH_PROXY_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-t nat -A MESH_PROXY_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
                "unless -t nat -C OUTPUT -j MESH_PROXY_OUTPUT",
                "  -t nat -A OUTPUT -j MESH_PROXY_OUTPUT",
            ]
        );
    }

    #[test]
    fn install_plan_with_everything_set() {
        let c = cfg(&[
            "--iptables-cmd",
            "/usr/sbin/iptables-legacy",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--admin-port",
            "15000",
            "--proxy-uid",
            "1337",
            "--skip-inbound-ports",
            "22,8000-8100,15000",
            "--skip-outbound-ports",
            "5432",
            "--skip-outbound-ports",
            "6379:6380",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,169.254.169.254,192.168.1.7/24",
        ]);
        let steps = plan(&c);
        assert!(steps.iter().all(|s| match s {
            Step::Run(a) | Step::IfAbsent { check: a, .. } => a[0] == "/usr/sbin/iptables-legacy",
            _ => false,
        }));
        let l = lines(&steps);
        let inbound: Vec<_> = l
            .iter()
            .filter(|s| s.starts_with("-t nat -A MESH_PROXY_INBOUND"))
            .map(|s| &s["-t nat -A MESH_PROXY_INBOUND ".len()..])
            .collect();
        assert_eq!(
            inbound,
            [
                "-p tcp --dport 15006 -j RETURN",
                "-p tcp --dport 15000 -j RETURN",
                "-p tcp --dport 22 -j RETURN",
                "-p tcp --dport 8000:8100 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 15006",
            ]
        );
        let outbound: Vec<_> = l
            .iter()
            .filter(|s| s.starts_with("-t nat -A MESH_PROXY_OUTPUT"))
            .map(|s| &s["-t nat -A MESH_PROXY_OUTPUT ".len()..])
            .collect();
        assert_eq!(
            outbound,
            [
                "-m owner --uid-owner 1337 -j RETURN",
                "-o lo -j RETURN",
                "-d 127.0.0.0/8 -j RETURN",
                "-p tcp --dport 5432 -j RETURN",
                "-p tcp --dport 6379:6380 -j RETURN",
                "-d 10.0.0.0/8 -j RETURN",
                "-d 169.254.169.254/32 -j RETURN",
                "-d 192.168.1.0/24 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn remove_plan() {
        assert_eq!(
            lines(&plan(&cfg(&["--remove"]))),
            [
                "if -t nat -S MESH_PROXY_INBOUND",
                "  while -t nat -C PREROUTING -j MESH_PROXY_INBOUND",
                "    -t nat -D PREROUTING -j MESH_PROXY_INBOUND",
                "  -t nat -F MESH_PROXY_INBOUND",
                "  -t nat -X MESH_PROXY_INBOUND",
                "if -t nat -S MESH_PROXY_OUTPUT",
                "  while -t nat -C OUTPUT -j MESH_PROXY_OUTPUT",
                "    -t nat -D OUTPUT -j MESH_PROXY_OUTPUT",
                "  -t nat -F MESH_PROXY_OUTPUT",
                "  -t nat -X MESH_PROXY_OUTPUT",
            ]
        );
    }

    #[test]
    fn lists_accept_whitespace_empty_items_and_duplicates() {
        let c = cfg(&[
            "--skip-inbound-ports",
            " 22 , ,4143,22 8080",
            "--skip-outbound-cidrs",
            "",
            "--skip-outbound-ports",
            "",
        ]);
        assert_eq!(
            c.skip_inbound_ports,
            [4143, 4191, 22, 8080].map(PortRange::single)
        );
        assert!(c.skip_outbound_cidrs.is_empty() && c.skip_outbound_ports.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = problems(&[
            "--inbound-port",
            "http",
            "--outbound-port",
            "70000",
            "--admin-port",
            "0",
            "--proxy-uid",
            "-5",
            "--skip-inbound-ports",
            "22,abc,9000-8000",
            "--skip-outbound-ports",
            "1-x",
            "--skip-outbound-cidrs",
            "10.0.0.0/33,fd00::/8,not-an-ip",
            "--iptables-cmd",
            "iptables -w",
        ]);
        let flags: Vec<_> = p.iter().map(|p| (p.flag, p.value.as_str())).collect();
        assert_eq!(
            flags,
            [
                ("--inbound-port", "http"),
                ("--outbound-port", "70000"),
                ("--admin-port", "0"),
                ("--proxy-uid", "-5"),
                ("--skip-inbound-ports", "abc"),
                ("--skip-inbound-ports", "9000-8000"),
                ("--skip-outbound-ports", "1-x"),
                ("--skip-outbound-cidrs", "10.0.0.0/33"),
                ("--skip-outbound-cidrs", "fd00::/8"),
                ("--skip-outbound-cidrs", "not-an-ip"),
                ("--iptables-cmd", "iptables -w"),
            ]
        );
        let text = InvalidArgs { problems: p }.to_string();
        assert!(text.starts_with("invalid arguments for `mesh-proxy init` (11 problems)"));
        assert!(text.contains(
            "--inbound-port (env MESH_PROXY_INIT_INBOUND_PORT) = \"http\": not a port number; \
             use an integer from 1 to 65535"
        ));
        assert!(text.contains("write it as 8000-9000"), "{text}");
        assert!(text.contains("IPv6 is not supported"), "{text}");
        assert!(text.contains("prefix length must be 0 to 32"), "{text}");
    }

    #[test]
    fn conflicting_ports_and_bad_uids() {
        let p = problems(&["--outbound-port", "4143", "--admin-port", "4143"]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].flag == "--outbound-port" && p[0].message.contains("--inbound-port"));
        assert!(p[1].flag == "--admin-port" && p[1].message.contains("--inbound-port"));
        assert!(p[2].flag == "--admin-port" && p[2].message.contains("--outbound-port"));

        let p = problems(&["--proxy-uid", "0"]);
        assert!(p[0].message.contains("non-root"), "{p:?}");
        let p = problems(&["--proxy-uid", "4294967295"]);
        assert!(p[0].message.contains("not a valid UID"), "{p:?}");
        let p = problems(&["--iptables-cmd", " "]);
        assert!(p[0].message.contains("is empty"), "{p:?}");
    }

    #[test]
    fn port_ranges_and_cidrs() {
        assert_eq!(parse_port_range("80"), Ok(PortRange::single(80)));
        assert_eq!(
            parse_port_range("1-65535").map(|r| r.to_string()),
            Ok("1:65535".into())
        );
        assert_eq!(
            parse_port_range("7:7").map(|r| r.to_string()),
            Ok("7".into())
        );
        for bad in ["", "0", "65536", "-1", "1-", "a-b", "5-4", "1.5"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?} accepted");
        }
        let ok = |s: &str| parse_cidr(s).map(|c| c.to_string());
        assert_eq!(ok("10.1.2.3"), Ok("10.1.2.3/32".into()));
        assert_eq!(ok("10.1.2.3/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(ok("1.2.3.4/0"), Ok("0.0.0.0/0".into()));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0/8",
            "::1",
            "10.0.0.0/-1",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dry_run_prints_a_shell_script_and_runs_nothing() {
        let mut fake = Fake::default();
        let script = match run_with(&args(&["--dry-run"]), &mut fake) {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        };
        assert!(fake.log.is_empty(), "dry-run ran {:?}", fake.log);
        assert!(script.contains(
            "if ! iptables -t nat -S MESH_PROXY_INBOUND >/dev/null 2>&1; then\n  \
             iptables -t nat -N MESH_PROXY_INBOUND\nfi\n"
        ));
        assert!(script.contains("iptables -t nat -A MESH_PROXY_OUTPUT -o lo -j RETURN\n"));

        let script = match run_with(&args(&["--dry-run", "--remove"]), &mut fake) {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        };
        assert!(script.contains(
            "  while iptables -t nat -C OUTPUT -j MESH_PROXY_OUTPUT >/dev/null 2>&1; do\n    \
             iptables -t nat -D OUTPUT -j MESH_PROXY_OUTPUT\n  done\n"
        ));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    /// An in-memory iptables nat table that understands the subset of the CLI `plan` uses,
    /// with real iptables' exit codes (1 = not found, 2 = bad target).
    #[derive(Default)]
    struct Fake {
        chains: BTreeMap<String, Vec<Vec<String>>>,
        log: Vec<String>,
        missing_binary: bool,
        denied: bool,
    }

    impl Fake {
        fn new() -> Self {
            let mut f = Fake::default();
            for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
                f.chains.insert(c.into(), Vec::new());
            }
            f
        }

        fn dump(&self) -> Vec<String> {
            let mut out = Vec::new();
            for (name, rules) in &self.chains {
                out.push(format!("-N {name}"));
                for r in rules {
                    out.push(format!("-A {name} {}", r.join(" ")));
                }
            }
            out
        }
    }

    impl Runner for Fake {
        fn run(&mut self, argv: &[String]) -> io::Result<Outcome> {
            if self.missing_binary {
                return Err(io::ErrorKind::NotFound.into());
            }
            self.log.push(argv[1..].join(" "));
            let done = |code: i32, stderr: &str| {
                Ok(Outcome {
                    code: Some(code),
                    stdout: String::new(),
                    stderr: stderr.into(),
                })
            };
            if self.denied {
                return done(4, "Permission denied (you must be root)");
            }
            assert_eq!(&argv[1..3], ["-t", "nat"]);
            let op = argv[3].as_str();
            let chain = argv.get(4).cloned().unwrap_or_default();
            let rule: Vec<String> = argv.iter().skip(5).cloned().collect();
            if let Some(pos) = rule.iter().position(|w| w == "-j") {
                let target = &rule[pos + 1];
                let builtin = ["RETURN", "REDIRECT", "ACCEPT"].contains(&target.as_str());
                if !builtin && !self.chains.contains_key(target) {
                    return done(2, "Couldn't load target");
                }
            }
            match op {
                "-S" if chain.is_empty() => done(0, ""),
                "-S" | "-F" | "-A" | "-C" | "-D" | "-X" if !self.chains.contains_key(&chain) => {
                    done(1, "No chain/target/match by that name.")
                }
                "-S" => done(0, ""),
                "-N" if self.chains.contains_key(&chain) => done(1, "Chain already exists."),
                "-N" => {
                    self.chains.insert(chain, Vec::new());
                    done(0, "")
                }
                "-F" => {
                    self.chains.insert(chain, Vec::new());
                    done(0, "")
                }
                "-A" => {
                    self.chains.entry(chain).or_default().push(rule);
                    done(0, "")
                }
                "-C" | "-D" => {
                    let rules = self.chains.entry(chain).or_default();
                    match rules.iter().position(|r| *r == rule) {
                        Some(i) => {
                            if op == "-D" {
                                rules.remove(i);
                            }
                            done(0, "")
                        }
                        None => done(1, "Bad rule"),
                    }
                }
                "-X" => {
                    let referenced = self
                        .chains
                        .values()
                        .flatten()
                        .any(|r| r.last() == Some(&chain));
                    if referenced || !self.chains[&chain].is_empty() {
                        return done(1, "Device or resource busy");
                    }
                    self.chains.remove(&chain);
                    done(0, "")
                }
                other => panic!("fake iptables: unsupported {other}"),
            }
        }
    }

    fn apply(fake: &mut Fake, flags: &[&str]) -> anyhow::Result<String> {
        run_with(&args(flags), fake)
    }

    #[test]
    fn install_is_idempotent_and_remove_is_clean() {
        let mut fake = Fake::new();
        let pristine = fake.dump();
        if let Err(e) = apply(&mut fake, &[]) {
            panic!("{e:#}");
        }
        let once = fake.dump();
        assert!(once.contains(&"-A PREROUTING -j MESH_PROXY_INBOUND".to_string()));
        assert!(once.contains(&"-A OUTPUT -j MESH_PROXY_OUTPUT".to_string()));
        assert!(
            once.contains(&"-A MESH_PROXY_OUTPUT -m owner --uid-owner 2102 -j RETURN".to_string())
        );
        if let Err(e) = apply(&mut fake, &[]) {
            panic!("{e:#}");
        }
        assert_eq!(fake.dump(), once, "second install changed the rules");

        // Re-running with other settings replaces the rules instead of adding to them.
        if let Err(e) = apply(&mut fake, &["--outbound-port", "15001"]) {
            panic!("{e:#}");
        }
        let changed = fake.dump();
        assert_eq!(changed.len(), once.len());
        assert!(changed
            .contains(&"-A MESH_PROXY_OUTPUT -p tcp -j REDIRECT --to-ports 15001".to_string()));

        for _ in 0..2 {
            if let Err(e) = apply(&mut fake, &["--remove"]) {
                panic!("{e:#}");
            }
            assert_eq!(fake.dump(), pristine);
        }
    }

    #[test]
    fn remove_deletes_duplicate_jumps() {
        let mut fake = Fake::new();
        if let Err(e) = apply(&mut fake, &[]) {
            panic!("{e:#}");
        }
        let jump = vec!["-j".to_string(), OUTPUT_CHAIN.to_string()];
        fake.chains.entry("OUTPUT".into()).or_default().push(jump);
        if let Err(e) = apply(&mut fake, &["--remove"]) {
            panic!("{e:#}");
        }
        assert_eq!(fake.dump(), Fake::new().dump());
    }

    #[test]
    fn missing_binary_and_permission_errors_are_explained() {
        let mut fake = Fake {
            missing_binary: true,
            ..Fake::new()
        };
        let e = apply(&mut fake, &[])
            .err()
            .map_or(String::new(), |e| format!("{e:#}"));
        assert!(e.contains("`iptables` was not found"), "{e}");
        assert!(e.contains("apt-get install -y iptables"), "{e}");

        let mut fake = Fake {
            denied: true,
            ..Fake::new()
        };
        let e = apply(&mut fake, &["--remove"])
            .err()
            .map_or(String::new(), |e| format!("{e:#}"));
        assert!(e.contains("cannot use the iptables nat table"), "{e}");
        assert!(e.contains("CAP_NET_ADMIN"), "{e}");
        // The preflight failed, so nothing else was attempted.
        assert_eq!(fake.log, ["-t nat -S"]);
    }

    #[test]
    fn unexpected_check_status_is_an_error_not_absent() {
        struct Weird;
        impl Runner for Weird {
            fn run(&mut self, argv: &[String]) -> io::Result<Outcome> {
                let code = if argv.len() == 4 { 0 } else { 3 };
                Ok(Outcome {
                    code: Some(code),
                    stdout: String::new(),
                    stderr: "boom".into(),
                })
            }
        }
        let e = run_with(&args(&["--remove"]), &mut Weird)
            .err()
            .map_or(String::new(), |e| format!("{e:#}"));
        assert!(
            e.contains("`iptables -t nat -S MESH_PROXY_INBOUND` failed (exit status 3): boom"),
            "{e}"
        );
    }

    #[test]
    fn invalid_args_change_nothing() {
        let mut fake = Fake::new();
        let e = apply(&mut fake, &["--inbound-port", "x", "--proxy-uid", "y"])
            .err()
            .map_or(String::new(), |e| format!("{e:#}"));
        assert!(e.contains("2 problems"), "{e}");
        assert!(fake.log.is_empty());
    }
}
