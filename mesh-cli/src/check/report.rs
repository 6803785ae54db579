//! The results of one run of `meshctl check` and how they are printed: text sections like
//! `linkerd check` (symbols, or ASCII with `--no-color` or when stdout is not a terminal),
//! or one JSON document with `-o json`.

use std::fmt::Write as _;

use serde::Serialize;

use super::codes::{Category, Check};

/// How a check came out.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Error,
}

/// The result of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub check: &'static Check,
    pub status: Status,
    /// What was found (for ok lines: a detail worth showing, or empty).
    pub message: String,
    /// What to do (empty for ok lines).
    pub hint: String,
}

impl Outcome {
    pub fn ok(check: &'static Check, message: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            message: message.into(),
            hint: String::new(),
        }
    }

    pub fn warning(
        check: &'static Check,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            check,
            status: Status::Warning,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn error(
        check: &'static Check,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            check,
            status: Status::Error,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn failed(&self) -> bool {
        self.status == Status::Error
    }
}

/// One section's results, and why the rest of it (or of the run) did not run, if so.
#[derive(Debug, Clone)]
pub struct Section {
    pub category: Category,
    pub outcomes: Vec<Outcome>,
    pub skipped: Option<String>,
}

/// Everything one run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sections: Vec<Section>,
    /// Said after the sections (e.g. why later sections did not run).
    pub notes: Vec<String>,
}

impl Report {
    fn outcomes(&self) -> impl Iterator<Item = &Outcome> {
        self.sections.iter().flat_map(|s| s.outcomes.iter())
    }

    /// Number of failed checks.
    pub fn failures(&self) -> usize {
        self.outcomes().filter(|o| o.failed()).count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.outcomes()
            .filter(|o| o.status == Status::Warning)
            .count()
    }

    /// The codes of the failed checks, to say what a `--wait` is waiting for.
    pub fn failed_codes(&self) -> Vec<&'static str> {
        self.outcomes()
            .filter(|o| o.failed())
            .map(|o| o.check.code)
            .collect()
    }

    /// The text output. `fancy`: symbols and colours (a terminal without `--no-color`).
    pub fn text(&self, fancy: bool) -> String {
        let mut out = String::new();
        for section in &self.sections {
            let title = section.category.name();
            let _ = writeln!(out, "{title}\n{}", "-".repeat(title.len()));
            for o in &section.outcomes {
                let mark = mark(o.status, fancy);
                if o.message.is_empty() {
                    let _ = writeln!(out, "{mark} {}", o.check.description);
                } else if o.status == Status::Ok {
                    let _ = writeln!(out, "{mark} {}: {}", o.check.description, o.message);
                } else {
                    let _ = writeln!(out, "{mark} {}", o.check.description);
                    for line in o.message.lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
                if o.status != Status::Ok {
                    let _ = writeln!(
                        out,
                        "    see docs/checks.md#{}: {}",
                        o.check.code.to_ascii_lowercase(),
                        o.hint
                    );
                }
            }
            if let Some(why) = &section.skipped {
                let _ = writeln!(
                    out,
                    "    (the other checks of this section did not run: {why})"
                );
            }
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}\n");
        }
        let (failures, warnings) = (self.failures(), self.warnings());
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        if failures == 0 {
            let _ = write!(out, "Status check results are {}", mark(Status::Ok, fancy));
            if warnings > 0 {
                let _ = write!(out, " ({})", plural(warnings, "warning", "warnings"));
            }
        } else {
            let _ = write!(
                out,
                "Status check results are {}: {} failed, {}",
                mark(Status::Error, fancy),
                failures,
                plural(warnings, "warning", "warnings")
            );
        }
        out.push('\n');
        out
    }

    /// The JSON output: `{"success", "failures", "warnings", "categories": [{"name",
    /// "checks": [{code, category, description, status, message, hint}], "skipped"}],
    /// "notes"}`.
    pub fn json(&self) -> serde_json::Value {
        let categories: Vec<serde_json::Value> = self
            .sections
            .iter()
            .map(|s| {
                let checks: Vec<serde_json::Value> = s
                    .outcomes
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "code": o.check.code,
                            "category": o.check.category.name(),
                            "description": o.check.description,
                            "status": o.status,
                            "message": o.message,
                            "hint": o.hint,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": s.category.name(),
                    "checks": checks,
                    "skipped": s.skipped,
                })
            })
            .collect();
        serde_json::json!({
            "success": self.failures() == 0,
            "failures": self.failures(),
            "warnings": self.warnings(),
            "categories": categories,
            "notes": self.notes,
        })
    }
}

/// The mark before a check's line.
fn mark(status: Status, fancy: bool) -> &'static str {
    match (status, fancy) {
        (Status::Ok, true) => "\x1b[32m✔\x1b[0m",
        (Status::Warning, true) => "\x1b[33m‼\x1b[0m",
        (Status::Error, true) => "\x1b[31m✖\x1b[0m",
        (Status::Ok, false) => "[ok]",
        (Status::Warning, false) => "[warn]",
        (Status::Error, false) => "[FAIL]",
    }
}

#[cfg(test)]
mod tests {
    use super::super::codes;
    use super::*;

    fn report() -> Report {
        Report {
            sections: vec![Section {
                category: Category::Install,
                outcomes: vec![
                    Outcome::ok(&codes::CRDS_EXIST, ""),
                    Outcome::error(
                        &codes::CRDS_CURRENT,
                        "servers.mesh.dev is outdated",
                        "run meshctl upgrade",
                    ),
                    Outcome::warning(&codes::LEADER, "no leader", "wait"),
                ],
                skipped: None,
            }],
            notes: vec![],
        }
    }

    #[test]
    fn text_lines_hints_and_summary() {
        let text = report().text(false);
        assert!(text.starts_with("install\n-------\n[ok] the mesh CRDs exist\n"));
        assert!(text.contains(
            "[FAIL] the mesh CRDs are current\n    servers.mesh.dev is outdated\n    see docs/checks.md#mesh1202: run meshctl upgrade\n"
        ));
        assert!(text.contains("[warn] a controller leader is elected\n"));
        assert!(text.ends_with("Status check results are [FAIL]: 1 failed, 1 warning\n"));
        let fancy = report().text(true);
        assert!(fancy.contains("✖") && fancy.contains("‼") && fancy.contains("✔"));
    }

    #[test]
    fn json_shape() {
        let json = report().json();
        assert_eq!(json["success"], false);
        assert_eq!(json["failures"], 1);
        let check = &json["categories"][0]["checks"][1];
        assert_eq!(check["code"], "MESH1202");
        assert_eq!(check["category"], "install");
        assert_eq!(check["status"], "error");
        assert_eq!(check["hint"], "run meshctl upgrade");
    }

    #[test]
    fn healthy_summary() {
        let r = Report {
            sections: vec![Section {
                category: Category::Install,
                outcomes: vec![Outcome::ok(&codes::CRDS_EXIST, "")],
                skipped: None,
            }],
            notes: vec![],
        };
        assert!(r.text(false).ends_with("Status check results are [ok]\n"));
    }
}
