//! Step-by-step progress on stderr: a spinner with the step's name on a terminal, one plain
//! line per step otherwise (logs, CI), so both people and scripts can follow a long wait.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports the steps of one command.
pub struct Progress {
    tty: bool,
}

/// One step being waited for.
pub struct Step {
    name: String,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Spinners when stderr is a terminal.
    pub fn stderr() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Starts a step: `name` says what is awaited ("the controller to be available").
    pub fn step(&self, name: &str) -> Step {
        let bar = if self.tty {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} waiting for {msg} ({elapsed})")
            {
                bar.set_style(style);
            }
            bar.set_message(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        } else {
            eprintln!("waiting for {name}");
            None
        };
        Step {
            name: name.to_string(),
            started: Instant::now(),
            bar,
        }
    }
}

impl Step {
    /// Updates the detail shown next to the step (what is still missing).
    pub fn detail(&self, detail: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}: {detail}", self.name));
        }
    }

    /// The step is done.
    pub fn done(self) {
        let line = format!(
            "ready: {} ({:.1}s)",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{line}");
    }

    /// The step did not finish in time; `why` says what was still missing.
    pub fn failed(self, why: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "timed out after {:.0}s waiting for {}: {why}",
            self.started.elapsed().as_secs_f64(),
            self.name
        );
    }
}
