//! `meshctl` says what it is today: a CLI without commands (this test also makes
//! `cargo test --workspace` build `target/debug/meshctl`).

use std::process::Command;

#[test]
fn help_says_there_are_no_commands_yet() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("no commands yet"), "{help}");
    for word in ["issue", "later", "next", "comes with"] {
        assert!(
            !help.contains(word),
            "help speaks of a work plan ({word}):\n{help}"
        );
    }
}

#[test]
fn without_a_command_it_fails_and_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no commands yet"), "{err}");
    assert!(!err.contains("later"), "{err}");
}
