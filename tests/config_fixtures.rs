//! Config fixtures: every file under `tests/config/valid/` must load, every file under
//! `tests/config/invalid/` must be refused with exactly the diagnostics in its `.expected` file
//! (`FILE:LINE:COL: message`, one a line, as `vmnd check` prints them). A valid fixture may have
//! an `.expected` file too: then it lists the warnings.
//!
//! After an intended change of wording, run with `VMND_BLESS_FIXTURES=1` to rewrite the
//! `.expected` files, and review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use vmnd::config::{self, Diagnostic};

/// The environment the valid fixtures and the example config expect. Given through `parse`'s
/// `env` closure so the tests never touch (or depend on) the process environment.
fn fixture_env(name: &str) -> Option<String> {
    let value = match name {
        "VMND_ADMIN_TOKEN" => "admin-token-for-tests",
        "VMND_AIRTEL_PASSWORD" => "airtel1",
        "VMND_JIO_PASSWORD" => "jio1",
        "VMND_CRM_SECRET" => "whsec-test",
        "VMND_SMTP_PASSWORD" => "smtp-password",
        _ => return None,
    };
    Some(value.to_string())
}

/// The `.toml` files in a fixture directory, sorted, as paths relative to the crate root
/// (cargo runs tests there), which is also how they are named in the diagnostics.
fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Diagnostics as `vmnd check` prints them.
fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("{d}\n")).collect()
}

/// Compares with `path.expected`, or rewrites it when blessing. Returns a failure description.
fn compare_expected(path: &Path, actual: &str) -> Option<String> {
    let expected_path = path.with_extension("expected");
    if std::env::var_os("VMND_BLESS_FIXTURES").is_some() {
        if actual.is_empty() {
            let _ = fs::remove_file(&expected_path);
        } else {
            fs::write(&expected_path, actual).expect("write .expected");
        }
        return None;
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "{}: diagnostics differ\n--- expected ({})\n{expected}--- actual\n{actual}",
            path.display(),
            expected_path.display()
        )
    })
}

#[test]
fn valid_fixtures_load() {
    let files = fixtures("tests/config/valid");
    assert!(files.len() >= 2, "valid fixtures missing");
    let mut failures = Vec::new();
    for path in &files {
        let name = path.display().to_string();
        let source = fs::read_to_string(path).expect("read fixture");
        match config::parse(&source, &name, &fixture_env) {
            Ok((_, warnings)) => failures.extend(compare_expected(path, &render(&warnings))),
            Err(diagnostics) => failures.push(format!(
                "{name}: expected to load, got:\n{}",
                render(&diagnostics)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_fixtures_are_refused_with_their_diagnostics() {
    let files = fixtures("tests/config/invalid");
    assert!(files.len() >= 12, "invalid fixtures missing");
    let mut failures = Vec::new();
    for path in &files {
        // Through `load`, the real entry point: these fixtures need no environment (the one
        // about an unset variable names one nobody sets).
        match config::load(path) {
            Ok(_) => failures.push(format!("{}: expected errors, loaded", path.display())),
            Err(diagnostics) => {
                if diagnostics.iter().all(Diagnostic::is_warning) {
                    failures.push(format!("{}: refused without an error", path.display()));
                }
                failures.extend(compare_expected(path, &render(&diagnostics)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invalid_fixture_has_an_expected_file() {
    for path in fixtures("tests/config/invalid") {
        let expected = path.with_extension("expected");
        assert!(expected.exists(), "{} is missing", expected.display());
    }
}

#[test]
fn full_fixture_resolves_every_key() {
    let path = "tests/config/valid/full.toml";
    let source = fs::read_to_string(path).expect("read fixture");
    let (config, warnings) = config::parse(&source, path, &fixture_env).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");

    let daemon = &config.daemon;
    assert_eq!(daemon.admin_listen.to_string(), "0.0.0.0:8640");
    assert_eq!(daemon.admin_token.as_deref(), Some("admin-token-for-tests"));
    assert_eq!(daemon.reassembly_timeout.as_secs(), 300);
    assert_eq!(daemon.dedup_window.map(|d| d.as_secs()), Some(30));
    assert_eq!((daemon.cache_mb, daemon.fsync), (64, false));

    let airtel = config.carrier("airtel").expect("airtel");
    assert_eq!(airtel.password, "airtel1");
    assert_eq!(airtel.bind, config::BindMode::Receiver);
    assert_eq!(airtel.reconnect_min.as_millis(), 500);
    let jio = config.carrier("jio").expect("jio");
    assert_eq!(jio.password, "jio1");
    assert_eq!((jio.window, jio.enquire_link.as_secs()), (32, 30));

    let crm = config.webhook("crm").expect("crm");
    assert_eq!(crm.secret.as_deref(), Some("whsec-test"));
    assert_eq!(crm.concurrency, 8);
    let receipts = config.webhook("receipts").expect("receipts");
    // Scheme lower-cased and an empty path made explicit, so the sender need not guess.
    assert_eq!(receipts.url, "http://[::1]:9000/");
    assert_eq!(receipts.secret, None);
    assert!(receipts.retry_for.is_zero());

    let short = config.number("567678").expect("short code");
    assert_eq!(short.carrier.as_deref(), Some("airtel"));
    assert_eq!(short.receipts_webhook.as_deref(), Some("receipts"));
    let long = config.number("98 7654 3210").expect("long code");
    assert_eq!(long.vmn, "9876543210");
    assert_eq!(long.default_actions.webhook.as_deref(), Some("crm"));
}

#[test]
fn valid_fixture_without_its_environment_names_every_missing_variable() {
    let path = "tests/config/valid/full.toml";
    let source = fs::read_to_string(path).expect("read fixture");
    let diagnostics = config::parse(&source, path, &|_| None).expect_err("env missing");
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    for var in [
        "VMND_ADMIN_TOKEN",
        "VMND_AIRTEL_PASSWORD",
        "VMND_JIO_PASSWORD",
        "VMND_CRM_SECRET",
    ] {
        assert!(
            messages
                .iter()
                .any(|m| m.contains(var) && m.contains("not set")),
            "{var}: {messages:?}"
        );
    }
}

#[test]
fn example_config_loads() {
    let path = "conf/vmnd.toml";
    let source = fs::read_to_string(path).expect("read conf/vmnd.toml");
    let (config, warnings) = config::parse(&source, path, &fixture_env)
        .unwrap_or_else(|d| panic!("conf/vmnd.toml is refused:\n{}", render(&d)));
    assert!(warnings.is_empty(), "{}", render(&warnings));
    assert!(config.carrier("sim").is_some());
    assert_eq!(
        config.webhook("crm").and_then(|w| w.secret.as_deref()),
        Some("whsec-test")
    );
    assert_eq!(config.numbers.len(), 2);
    assert!(config.numbers.iter().any(|n| n.vmn.len() == 6));
    assert!(config.numbers.iter().any(|n| n.vmn.len() == 10));
    assert!(config.numbers.iter().any(|n| n.receipts_webhook.is_some()));
    // It shows keyword rules: a campaign with an alias and an expiry, and a poll.
    let keywords: Vec<&config::KeywordRule> =
        config.numbers.iter().flat_map(|n| &n.keywords).collect();
    assert!(
        keywords
            .iter()
            .any(|k| !k.aliases.is_empty() && k.expires.is_some() && k.expiry_reply.is_some()),
        "{keywords:#?}"
    );
    assert!(keywords.iter().any(|k| k.poll.is_some()), "{keywords:#?}");
}

#[test]
fn campaigns_fixture_resolves_keywords_polls_and_time_zones() {
    let path = "tests/config/valid/campaigns.toml";
    let source = fs::read_to_string(path).expect("read fixture");
    let (config, warnings) = config::parse(&source, path, &fixture_env).expect("valid");
    assert!(warnings.is_empty(), "{}", render(&warnings));
    assert_eq!(config.carrier("sim").expect("sim").submit_per_second, 20);

    let n = config.number("567678").expect("number");
    assert_eq!(n.default_actions.webhook.as_deref(), Some("acme"));
    assert!(n.default_actions.reply.is_some());
    let names: Vec<&str> = n.keywords.iter().map(|k| k.keyword.as_str()).collect();
    assert_eq!(names, ["JOIN", "Launch Paris", "VOTE", "FEEDBACK"]);

    let join = &n.keywords[0];
    assert_eq!(join.aliases, ["SUBSCRIBE", "Sign Up"]);
    assert_eq!(join.tenant.as_deref(), Some("acme"));
    assert_eq!(join.inbox, "summer");
    assert_eq!((join.line, join.col), (30, 11));
    // Indian time: 2026-06-01T00:00:00+05:30 is 2026-05-31T18:30:00Z.
    let starts = join.starts.expect("starts");
    assert_eq!(starts.offset().local_minus_utc(), 5 * 3600 + 1800);
    assert_eq!(
        starts.naive_utc().to_string(),
        "2026-05-31 18:30:00",
        "{starts}"
    );
    // Written as a TOML date-time rather than a string.
    assert_eq!(
        join.expires.expect("expires").to_rfc3339(),
        "2026-12-31T23:59:59+05:30"
    );
    assert!(join.expiry_reply.is_some());
    let a = &join.actions;
    assert_eq!(a.webhook.as_deref(), Some("acme"));
    assert_eq!(a.reply_after.map(|d| d.as_secs()), Some(600));
    let window = a.reply_window.as_ref().expect("window");
    assert_eq!(window.tz, chrono_tz::Asia::Kolkata);
    assert_eq!(a.forward_to, ["919800000000", "447700900123"]);
    assert_eq!(a.forward_template, "Lead {from} ({inbox}): {args}");

    let paris = &n.keywords[1];
    assert_eq!(paris.inbox, "launch paris");
    assert_eq!(paris.tenant.as_deref(), Some("globex"));
    assert_eq!(
        paris.starts.expect("starts").offset().local_minus_utc(),
        2 * 3600
    );
    assert_eq!(
        paris.expires.expect("expires").to_rfc3339(),
        "2026-09-30T16:00:00+00:00"
    );
    let window = paris.actions.reply_window.as_ref().expect("window");
    assert_eq!(window.tz, chrono_tz::Europe::Paris);
    assert!(window.start > window.end, "wraps midnight: {window:?}");
    assert_eq!(paris.actions.forward_template, "{from}: {text}");

    let vote = &n.keywords[2];
    let poll = vote.poll.as_ref().expect("poll");
    assert_eq!(poll.options, ["A", "b", "3"]);
    assert!(!poll.last_vote_counts);
    assert_eq!(
        poll.invalid_reply.as_deref(),
        Some("Please answer VOTE and one of {options}.")
    );

    let feedback = &n.keywords[3];
    assert_eq!(feedback.inbox, "feedback");
    assert_eq!(
        feedback.actions,
        config::Actions {
            forward_template: "{from}: {text}".to_string(),
            ..Default::default()
        }
    );
    assert_eq!(
        (feedback.starts, feedback.expires, &feedback.poll),
        (None, None, &None)
    );
}

#[test]
fn load_reports_an_unreadable_file_as_a_diagnostic() {
    let path = Path::new("tests/config/no-such-file.toml");
    let diagnostics = config::load(path).expect_err("missing file");
    assert_eq!(diagnostics.len(), 1);
    let d = &diagnostics[0];
    assert_eq!(
        (d.file.as_str(), d.line, d.col),
        ("tests/config/no-such-file.toml", 1, 1)
    );
    assert!(d.message.starts_with("cannot read the config file"), "{d}");
}

#[test]
fn load_reports_invalid_utf8_at_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latin1.toml");
    fs::write(&path, b"[daemon]\ndata_dir = \"caf\xe9\"\n").expect("write");
    let diagnostics = config::load(&path).expect_err("not UTF-8");
    assert_eq!(diagnostics.len(), 1);
    assert_eq!((diagnostics[0].line, diagnostics[0].col), (2, 16));
    assert!(diagnostics[0].message.contains("UTF-8"));
}
