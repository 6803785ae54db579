//! What the real controller binary tells its user when something is wrong: no cluster for
//! `--source kubernetes`, a broken file in local mode (on its first load and after a valid
//! version). Messages are said once, without colour codes when the output is not a terminal.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn kubernetes_without_a_cluster_says_so_once_and_exits() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no-such-kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
        .args([
            "--source",
            "kubernetes",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &missing)
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("MESH_CONTROLLER_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "must fail without a cluster:\n{text}"
    );
    let path = missing.display().to_string();
    assert_eq!(
        text.matches(&path).count(),
        1,
        "the kubeconfig path must be named once:\n{text}"
    );
    assert_eq!(
        text.matches("No such file").count(),
        1,
        "the cause must be said once:\n{text}"
    );
    assert!(!text.contains("\"\""), "doubled quotes:\n{text}");
    assert!(!text.contains("'\""), "quoted quotes:\n{text}");
    assert!(!text.contains("\x1b["), "colour codes in a pipe:\n{text}");
    for hint in ["KUBECONFIG", "--source local", "in the cluster"] {
        assert!(
            text.contains(hint),
            "the message must say what to do ({hint}):\n{text}"
        );
    }
}

/// Polls `log` until it holds `what` `count` times (or 20 s pass); returns its text.
fn wait_for_log(log: &std::path::Path, what: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= count || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_broken_file_keeps_previous_objects_only_when_it_had_some() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.d");
    std::fs::create_dir(&config).unwrap();
    let service = |port: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\n\
             spec: {{selector: {{app: web}}, ports: [{{name: http, port: {port}}}]}}\n"
        )
    };
    let file = config.join("web.yaml");
    std::fs::write(&file, service("lots")).unwrap();
    let log = dir.path().join("controller.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
        .args(["--source", "local", "--config-dir"])
        .arg(&config)
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("MESH_CONTROLLER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let first = wait_for_log(&log, "rejected", 1);
    // Then valid, then broken again: now there are previous objects, and they stay.
    std::fs::write(&file, service("8080")).unwrap();
    wait_for_log(&log, "valid again", 1);
    std::fs::write(&file, service("many")).unwrap();
    let text = wait_for_log(&log, "rejected", 2);
    let _ = child.kill();
    let _ = child.wait();

    assert!(first.contains("rejected"), "no rejection logged:\n{first}");
    assert!(
        first.contains("none of the file's objects were loaded"),
        "a first load must say the objects were not loaded:\n{first}"
    );
    assert!(
        !first.contains("previous objects"),
        "there were no previous objects:\n{first}"
    );
    assert!(
        text.contains("valid again") && text.contains("the file's previous objects stay in force"),
        "a broken edit of a valid file keeps its objects:\n{text}"
    );
    assert!(!text.contains("\x1b["), "colour codes in a file:\n{text}");
}
