//! Operator commands that do not start the appliance.

mod common;

use std::process::Command;

fn check_config(toml: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = common::temp_dir("checkcfg");
    let file = dir.join("s.toml");
    std::fs::write(&file, toml).unwrap();
    let mut cmd = Command::new(common::BIN);
    cmd.arg("check-config").arg("--config").arg(&file);
    common::clean_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    out
}

#[test]
fn check_config_prints_effective_settings_without_secrets() {
    let out = check_config(
        "[server]\nworkers = 3\n",
        &[
            (
                "DATABASE_URL",
                "postgres://intake:s3cret@db.example/sandgnat",
            ),
            ("SANDGNAT_SERVER__TIMEOUT", "45"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Table = text.parse().expect("check-config prints TOML");
    assert_eq!(parsed["server"]["workers"].as_integer(), Some(3));
    assert_eq!(parsed["server"]["timeout"].as_integer(), Some(45));
    // The front end's total deadline for a request head, with its default.
    assert_eq!(parsed["proxy"]["header_timeout"].as_integer(), Some(30));
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        text.contains("postgres://intake:********@db.example/sandgnat"),
        "{text}"
    );
}

#[test]
fn check_config_hides_passwords_in_every_url_form() {
    let out = check_config(
        "[database]\n\
         url = \"postgres://intake@db.example/sandgnat?sslmode=require&password=qu3ry-pw\"\n\
         [redis]\n\
         url = \"redis://cache.example:6379/0?password=r3dis-pw\"\n",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["qu3ry-pw", "r3dis-pw"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    let parsed: toml::Table = text.parse().expect("check-config prints TOML");
    assert_eq!(
        parsed["database"]["url"].as_str(),
        Some("postgres://intake@db.example/sandgnat?sslmode=require&password=********")
    );
    assert_eq!(
        parsed["redis"]["url"].as_str(),
        Some("redis://cache.example:6379/0?password=********")
    );

    // A password with characters a URL should have escaped: hidden whole.
    let out = check_config(
        "[redis]\nurl = \"redis://default:pa/ss@w0rd@cache.example/0\"\n",
        &[(
            "DATABASE_URL",
            "postgres://intake:s3/cr@t@db.example/sandgnat",
        )],
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["pa/ss", "w0rd", "s3/cr", "cr@t"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    assert!(
        text.contains("redis://default:********@cache.example/0"),
        "{text}"
    );
}

#[test]
fn check_config_refuses_bad_values_with_exit_2() {
    let out = check_config("[server]\nbacklog = 0\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.backlog") && err.contains("1 to 65535"),
        "{err}"
    );

    let out = check_config("[log]\naccess_log_format = '%(nope)s'\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown atom %(nope)"));

    let out = check_config("[proxy]\nheader_timeout = 0\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy.header_timeout"), "{err}");

    let out = check_config("", &[("SANDGNAT_METRICS__BIND", "localhost")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics.bind"));
}

#[test]
fn missing_config_file_is_an_error() {
    let out = Command::new(common::BIN)
        .args(["check-config", "--config", "/nonexistent/sandgnat.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sandgnat.toml"));
}
