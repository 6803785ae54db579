//! Reading the manifests named on the command line: files, directories (recursively, in
//! name order, hidden entries skipped) and stdin.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Problem;

/// One input's text and how errors name it (its path, or `stdin`).
#[derive(Debug)]
pub struct Source {
    pub name: String,
    /// Whether the input is JSON by its name (`.json`); other inputs are sniffed.
    pub json_by_name: bool,
    pub text: String,
}

/// The extensions read from directories.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every input, in order: each file's text or what keeps it from being read (all
/// inputs are tried).
pub fn read_all(inputs: &[String]) -> Vec<Result<Source, Problem>> {
    let mut out = Vec::new();
    for input in inputs {
        let mut sources = Vec::new();
        let mut problems = Vec::new();
        read_one(input, &mut sources, &mut problems);
        // Directory entries are read in name order; their problems go with them.
        out.extend(sources.into_iter().map(Ok));
        out.extend(problems.into_iter().map(Err));
    }
    out
}

fn read_one(input: &str, sources: &mut Vec<Source>, problems: &mut Vec<Problem>) {
    if input == "-" {
        let mut text = String::new();
        match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => sources.push(Source {
                name: "stdin".into(),
                json_by_name: false,
                text,
            }),
            Err(e) => problems.push(Problem::input(
                "stdin",
                format!("cannot be read: {e}; pipe UTF-8 YAML or JSON into meshctl"),
            )),
        }
        return;
    }
    let path = Path::new(input);
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let mut files = Vec::new();
            let mut seen = HashSet::new();
            walk(path, &mut files, problems, &mut seen);
            if files.is_empty() && problems.is_empty() {
                problems.push(Problem::input(
                    input,
                    "is a directory without .yaml, .yml or .json files (hidden files are \
                         skipped); name the files to read, or a directory that holds them",
                ));
            }
            for file in files {
                read_file(&file, sources, problems);
            }
        }
        Ok(_) => read_file(path, sources, problems),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(Problem::input(
            input,
            "does not exist; check the path (give - to read stdin, or KIND/NAME such as \
                 deploy/web for a live workload)",
        )),
        Err(e) => problems.push(Problem::input(
            input,
            format!("cannot be read: {e}; check the path and its permissions"),
        )),
    }
}

fn read_file(path: &Path, sources: &mut Vec<Source>, problems: &mut Vec<Problem>) {
    let name = path.display().to_string();
    match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => sources.push(Source {
                json_by_name: has_extension(path, "json"),
                name,
                text,
            }),
            Err(e) => problems.push(Problem::input(
                &name,
                format!(
                    "is not UTF-8 text (invalid byte at offset {}); manifests are YAML or JSON",
                    e.utf8_error().valid_up_to()
                ),
            )),
        },
        Err(e) => problems.push(Problem::input(
            &name,
            format!("cannot be read: {e}; check the path and its permissions"),
        )),
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Collects the manifest files under `dir` in name order (directories and files mixed, as
/// `ls -R` sorts them), following symbolic links once per directory.
fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
    seen: &mut HashSet<PathBuf>,
) {
    let name = dir.display().to_string();
    match fs::canonicalize(dir) {
        Ok(real) => {
            if !seen.insert(real) {
                return; // a symbolic link back to a directory already read
            }
        }
        Err(e) => {
            problems.push(Problem::input(
                &name,
                format!("cannot be read: {e}; check the directory's permissions"),
            ));
            return;
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(Problem::input(
                &name,
                format!("is a directory that cannot be read: {e}; check its permissions"),
            ));
            return;
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => problems.push(Problem::input(
                &name,
                format!("is a directory that cannot be listed: {e}; check its permissions"),
            )),
        }
    }
    paths.sort();
    for path in paths {
        if is_hidden(&path) {
            continue;
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, files, problems, seen),
            Ok(_) => {
                if EXTENSIONS.iter().any(|ext| has_extension(&path, ext)) {
                    files.push(path);
                }
            }
            Err(e) => {
                if EXTENSIONS.iter().any(|ext| has_extension(&path, ext)) {
                    problems.push(Problem::input(
                        &path.display().to_string(),
                        format!("cannot be read: {e}; fix or remove it (a dangling link?)"),
                    ));
                }
            }
        }
    }
}
