//! What a scenario measured: load results as the test app reports them, and the per-scenario
//! summary printed to the test output and appended to `target/tmp/e2e-summary.txt`, which
//! `scripts/test.sh` prints in the CI log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

/// The JSON line of `mesh-echo load --json`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct LoadResult {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    #[serde(default)]
    pub statuses: BTreeMap<String, u64>,
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub replicas: BTreeMap<String, u64>,
    #[serde(default)]
    pub latency_ms: Latency,
    #[serde(default)]
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl LoadResult {
    /// Responses that named a replica whose name starts with `prefix`.
    pub fn replies_from(&self, prefix: &str) -> u64 {
        self.replicas
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Failures, as `status=count` pairs, for messages.
    pub fn failures(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.statuses {
            if !k.starts_with('2') && k != "grpc-0" {
                let _ = write!(s, "{k}={v} ");
            }
        }
        for (k, v) in &self.errors {
            let _ = write!(s, "[{k}]={v} ");
        }
        s.trim_end().to_string()
    }
}

struct Row {
    phase: String,
    result: Option<LoadResult>,
    note: String,
}

/// The summary of one scenario.
pub struct Report {
    title: String,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            rows: Vec::new(),
        }
    }

    /// A load phase with its figures and a note (what else was measured).
    pub fn load(&mut self, phase: &str, r: &LoadResult, note: impl Into<String>) {
        self.rows.push(Row {
            phase: phase.to_string(),
            result: Some(r.clone()),
            note: note.into(),
        });
    }

    /// A line without load figures.
    pub fn note(&mut self, phase: &str, note: impl Into<String>) {
        self.rows.push(Row {
            phase: phase.to_string(),
            result: None,
            note: note.into(),
        });
    }

    pub fn render(&self, outcome: &str) -> String {
        let mut s = format!("e2e {} [{outcome}]\n", self.title);
        let _ = writeln!(
            s,
            "  {:<34} {:>6} {:>6} {:>6} {:>8} {:>8}  notes",
            "phase", "sent", "ok", "failed", "p50 ms", "p99 ms"
        );
        for r in &self.rows {
            match &r.result {
                Some(l) => {
                    let _ = writeln!(
                        s,
                        "  {:<34} {:>6} {:>6} {:>6} {:>8.1} {:>8.1}  {}",
                        r.phase, l.sent, l.ok, l.failed, l.latency_ms.p50, l.latency_ms.p99, r.note
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  {:<34} {:>6} {:>6} {:>6} {:>8} {:>8}  {}",
                        r.phase, "-", "-", "-", "-", "-", r.note
                    );
                }
            }
        }
        s
    }

    /// Prints the summary and appends it to the run's summary file.
    pub fn publish(&self, outcome: &str) {
        let text = self.render(outcome);
        println!("{text}");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-summary.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }
}
