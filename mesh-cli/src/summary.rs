//! What a run did, in one line for stderr after the per-object lines.

use mesh_inject::{Mode, Outcome, Report};

/// inject (in a mode) or uninject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Inject(Mode),
    Uninject,
}

impl Operation {
    pub fn verb(self) -> &'static str {
        match self {
            Operation::Inject(_) => "inject",
            Operation::Uninject => "uninject",
        }
    }
}

/// `meshctl inject: 3 objects: 1 injected, 1 unchanged, 1 skipped` (with `dry_run`, the
/// changes are what would be done and the line says nothing was written).
pub fn line(op: Operation, reports: &[Report], dry_run: bool) -> String {
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    let changed = count(|o| o.changed());
    let unchanged = count(|o| matches!(o, Outcome::AlreadyInjected | Outcome::NotInjected));
    let skipped = count(|o| matches!(o, Outcome::Skipped(_)));
    let done = match (op, dry_run) {
        (Operation::Inject(_), false) => "injected",
        (Operation::Inject(_), true) => "to inject",
        (Operation::Uninject, false) => "uninjected",
        (Operation::Uninject, true) => "to uninject",
    };
    let objects = if reports.len() == 1 {
        "object"
    } else {
        "objects"
    };
    let mut out = format!(
        "meshctl {}: {} {objects}: {changed} {done}, {unchanged} unchanged, {skipped} skipped",
        op.verb(),
        reports.len()
    );
    if dry_run {
        out.push_str(" (dry run: nothing was written)");
    }
    out
}
