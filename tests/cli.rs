//! The `vmnd` binary's command line: `check` prints every problem as `FILE:LINE:COL: message`
//! and exits 1; a good file exits 0; `run` refuses a bad config before starting anything;
//! bad arguments exit 2 with the usage.

use std::process::Command;

fn vmnd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmnd"))
}

#[test]
fn check_reports_every_problem_with_position_and_exits_1() {
    let out = vmnd()
        .args([
            "check",
            "--config",
            "tests/config/invalid/two_problems.toml",
        ])
        .output()
        .expect("run vmnd");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected =
        std::fs::read_to_string("tests/config/invalid/two_problems.expected").expect("fixture");
    assert_eq!(stdout.trim_end(), expected.trim_end());
    assert_eq!(
        stdout.lines().count(),
        2,
        "both problems reported: {stdout}"
    );
}

#[test]
fn check_accepts_the_example_config() {
    let out = vmnd()
        .args(["check", "--config", "conf/vmnd.toml"])
        .env("VMND_CRM_SECRET", "whsec-example")
        .output()
        .expect("run vmnd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("conf/vmnd.toml: ok"), "{stdout}");
}

#[test]
fn check_names_a_missing_secret_variable() {
    let out = vmnd()
        .args(["check", "--config", "conf/vmnd.toml"])
        .env_remove("VMND_CRM_SECRET")
        .output()
        .expect("run vmnd");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("conf/vmnd.toml:") && stdout.contains("VMND_CRM_SECRET"),
        "{stdout}"
    );
}

#[test]
fn run_refuses_a_bad_config_before_starting() {
    let out = vmnd()
        .args(["run", "--config", "tests/config/invalid/bad_vmn.toml"])
        .output()
        .expect("run vmnd");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tests/config/invalid/bad_vmn.toml:"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["check"],
        &["check", "--config"],
        &["demo", "--forever"],
    ] {
        let out = vmnd().args(args).output().expect("run vmnd");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}"
        );
    }
}

#[test]
fn demo_runs_its_script_end_to_end() {
    let out = vmnd()
        .args(["demo", "--once"])
        .env("RUST_LOG", "error")
        .output()
        .expect("run vmnd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("11 deliver_sm sent, 11 acknowledged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Price: 10€ {promo} [x] ~ \\ ^ |"),
        "{stdout}"
    );
    assert!(stdout.contains("😀"), "{stdout}");
    assert!(stdout.contains("3 parts"), "{stdout}");
    assert!(
        stdout.contains("receipt for sim-0001 stat DELIVRD"),
        "{stdout}"
    );
    assert!(stdout.contains("stored as unrouted"), "{stdout}");
    assert_eq!(stdout.matches("forwarded to crm").count(), 8, "{stdout}");
    assert!(stdout.contains("[gsm7]  \"JOIN summer\""), "{stdout}");
    assert!(
        stdout.contains(
            "reply  567678 -> 919812345678  submit_sm: \"Thanks 919812345678! You joined summer."
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("Thanks, your vote a is counted"),
        "{stdout}"
    );
    // The JOIN forward reached the SMTP sink, and the reply by e-mail came back as SMS.
    assert!(
        stdout
            .contains("e-mail to leads@acme.example  Subject: \"[summer] SMS from 919812345678\""),
        "{stdout}"
    );
    assert!(stdout.contains("250 2.1.5 reply queued as SMS"), "{stdout}");
    assert!(
        stdout.contains(
            "reply  567678 -> 919812345678  submit_sm: \"See you at the summer launch!\""
        ),
        "{stdout}"
    );
}

/// Unusual environments get an error message and an exit code, never a panic (101): an
/// argument that is not UTF-8, a `TOKIO_WORKER_THREADS` the runtime cannot use, a stdout
/// closed before the output is written.
#[test]
fn unusual_environments_are_errors_not_panics() {
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = vmnd()
        .arg("check")
        .arg("--config")
        .arg(std::ffi::OsStr::from_bytes(b"\xff.toml"))
        .output()
        .expect("run vmnd");
    assert_eq!(not_utf8.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_utf8.stderr).contains("not UTF-8"));

    for value in ["0", "abc"] {
        let out = vmnd()
            .args(["run", "--config", "tests/config/valid/minimal.toml"])
            .env("TOKIO_WORKER_THREADS", value)
            .output()
            .expect("run vmnd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value}: {stderr}");
        assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // A reader that went away before the output: `vmnd --version | true`.
    let mut child = vmnd()
        .arg("--version")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmnd");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
