//! What meshctl reports as wrong: a [`Problem`] names the input (a file, `stdin`, or a live
//! object), and for manifests the document number and line, then says what is wrong and
//! what to do.

use std::fmt;

/// One thing wrong with the input or the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (`stdin`) or live object (`deployment "web" in namespace "shop"`).
    pub subject: String,
    /// 1-based document number and the line it is at (for manifests).
    pub document: Option<(usize, usize)>,
    pub message: String,
}

impl Problem {
    /// A problem with a whole input (missing file, unreadable directory).
    pub fn input(subject: &str, message: impl Into<String>) -> Self {
        Self {
            subject: subject.to_string(),
            document: None,
            message: message.into(),
        }
    }

    /// A problem with one document of an input.
    pub fn document(subject: &str, number: usize, line: usize, message: impl Into<String>) -> Self {
        Self {
            subject: subject.to_string(),
            document: Some((number, line)),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some((number, line)) => write!(
                f,
                "{}: document {number} (line {line}): {}",
                self.subject, self.message
            ),
            None => write!(f, "{}: {}", self.subject, self.message),
        }
    }
}

/// Prints the problems on stderr, each as `error: ...`.
pub fn print_all(problems: &[Problem]) {
    for p in problems {
        eprintln!("error: {p}");
    }
}
