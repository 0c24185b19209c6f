//! The `offload` binary: check-config on good and bad files.

use std::process::Command;

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run offload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_bad_key() {
    for (text, needle) in [
        (
            "[server]\nlisen = \"127.0.0.1:1\"\n",
            "did you mean `listen`",
        ),
        ("[server]\nlisten = \"localhost\"\n", "listen"),
        (
            "[upstream]\nresponse_timeout = \"soon\"\n",
            "response_timeout",
        ),
        ("[server\nlisten = 1\n", "TOML"),
        ("[store]\nkind = \"s3\"\n", "store.bucket"),
        // The files a start would read are read too, as `nginx -t` reads them.
        (
            "[server]\ntls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n",
            "server.tls.cert: reading /nonexistent/cert.pem",
        ),
        (
            "[upstream]\nurl = \"https://127.0.0.1:8443\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            "upstream.tls_ca_file",
        ),
        // What a start builds is built too: the upload routes' key templates, the rules.
        (
            "[[uploads]]\npath = \"/u\"\nkey_template = \"{prefix}{uuid}/{name}\"\n",
            "uploads[0].key_template: unknown placeholder {name}",
        ),
        (
            "[assets]\nprefixes = [\"/media/\"]\nsite_origins = [\"https://example.com/?lang=en\"]\n",
            "assets.site_origins",
        ),
        // The line a syntax error quotes keeps its password to itself.
        (
            "[upstream]\nurl = \"http://admin:S3cretPW@127.0.0.1:8000/\" x\n",
            "admin:***@127.0.0.1:8000",
        ),
    ] {
        let (ok, _, stderr) = check_config(text);
        assert!(!ok, "{text:?} was accepted");
        assert!(!stderr.contains("S3cretPW"), "{stderr}");
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{text:?} → {stderr}"
        );
        assert_eq!(
            stderr.matches("offload:").count(),
            1,
            "printed once: {stderr}"
        );
    }
}

/// A folder store's root is looked at as a start would use it, and not created.
#[test]
fn check_config_finds_a_store_root_that_cannot_be_a_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").expect("write file");
    let (ok, _, stderr) = check_config(&format!(
        "[store]\nroot = \"{}\"\n",
        file.join("data").display()
    ));
    assert!(!ok, "accepted a root inside a file");
    assert!(
        stderr.contains(&format!("{} is not a folder", file.display())),
        "{stderr}"
    );

    let fresh = dir.path().join("new/data");
    let (ok, _, stderr) = check_config(&format!("[store]\nroot = \"{}\"\n", fresh.display()));
    assert!(ok, "{stderr}");
    assert!(
        !dir.path().join("new").exists(),
        "check-config created the root"
    );
}

/// Environment variables hold bytes; only offload's own must be text.
#[test]
fn variables_that_are_not_utf8_are_no_crash() {
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"\xff");
    let run = |name: &std::ffi::OsStr| {
        Command::new(env!("CARGO_BIN_EXE_offload"))
            .arg("check-config")
            .env_remove("OFFLOAD_CONFIG")
            .env(name, not_utf8)
            .output()
            .expect("run offload")
    };
    let other = run(std::ffi::OsStr::new("SOME_OTHER_VARIABLE"));
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let ours = run(std::ffi::OsStr::new("OFFLOAD_STORE_BUCKET"));
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&ours.stderr).trim(),
        "offload: OFFLOAD_STORE_BUCKET: the value is not UTF-8"
    );
}

#[test]
fn check_config_prints_the_effective_config() {
    let (ok, stdout, stderr) =
        check_config("preset = \"wordpress\"\n[upstream]\nurl = \"http://127.0.0.1:8000\"\n");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("[server]"), "{stdout}");
    assert!(stdout.contains("/wp-content/uploads/"), "{stdout}");
}

/// A password in the app's URL would never reach the app (offload sends none): refused,
/// and not repeated.
#[test]
fn check_config_refuses_passwords_in_urls_without_printing_them() {
    let (ok, stdout, stderr) =
        check_config("[upstream]\nurl = \"http://admin:S3cretPw@127.0.0.1:8000/\"\n");
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("upstream.url: no user or password in it"),
        "{stderr}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("S3cretPw"),
        "{stderr}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example");
    let text = std::fs::read_to_string(example).expect("proxy.toml.example");
    let (ok, _, stderr) = check_config(&text);
    assert!(ok, "{stderr}");
}

#[test]
fn flags_override_the_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args([
            "check-config",
            "--listen",
            "127.0.0.1:7001",
            "--upstream",
            "http://127.0.0.1:7002",
            "--admin-listen",
            "off",
            "--log-format",
            "json",
        ])
        .env_remove("OFFLOAD_CONFIG")
        .output()
        .expect("run offload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen = \"127.0.0.1:7001\""), "{stdout}");
    assert!(
        stdout.contains("url = \"http://127.0.0.1:7002/\""),
        "{stdout}"
    );
    assert!(stdout.contains("admin_listen = \"off\""), "{stdout}");
    assert!(stdout.contains("format = \"json\""), "{stdout}");
}

/// `check-config` with `flag` set to `settling` passes, and to `clashing` fails naming
/// `clash`, the environment being `env`: flags are laid over the file and the environment
/// before any value is checked.
fn assert_a_flag_settles(
    flag: &str,
    env: &[(&str, &str)],
    (settling, clashing): (&str, &str),
    clash: &str,
) {
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_offload"))
            .args(["check-config", flag, value])
            .env_remove("OFFLOAD_CONFIG")
            .envs(env.iter().copied())
            .output()
            .expect("run offload")
    };
    let settled = run(settling);
    let stderr = String::from_utf8_lossy(&settled.stderr);
    assert!(settled.status.success(), "{flag} {settling}: {stderr}");
    let clashed = run(clashing);
    let stderr = String::from_utf8_lossy(&clashed.stderr);
    assert_eq!(
        clashed.status.code(),
        Some(1),
        "{flag} {clashing}: {stderr}"
    );
    assert!(stderr.contains(clash), "{stderr}");
}

/// `--admin-listen off` settles a clash of listeners.
#[test]
fn a_flag_can_settle_a_clash_of_listeners() {
    assert_a_flag_settles(
        "--admin-listen",
        &[("OFFLOAD_SERVER_LISTEN", "0.0.0.0:9090")],
        ("off", "127.0.0.1:9090"),
        "server.admin_listen: must differ",
    );
}

/// A file's `https://` app on a Unix socket (refused: the socket is plain HTTP) is fine once
/// `--upstream` names a plain one.
#[test]
fn a_flag_can_settle_values_that_clash() {
    assert_a_flag_settles(
        "--upstream",
        &[
            ("OFFLOAD_UPSTREAM_URL", "https://app"),
            ("OFFLOAD_UPSTREAM_UNIX_SOCKET", "/run/app.sock"),
        ],
        ("http://app", "https://other"),
        "upstream.unix_socket: HTTP only",
    );
}

/// A syntax error names the file it is in (which `OFFLOAD_CONFIG` may have chosen).
#[test]
fn a_syntax_error_names_its_file() {
    let (ok, _, stderr) = check_config("[server\nlisten = 1");
    assert!(!ok);
    assert!(
        stderr.contains("proxy.toml: TOML parse error at line 1"),
        "{stderr}"
    );
    // The line quoted is a credential's, unquoted: its value is not echoed (it would end up
    // in a CI or journal log).
    let (ok, _, stderr) = check_config("[store]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG");
    assert!(!ok);
    assert!(stderr.contains("TOML parse error at line 2"), "{stderr}");
    assert!(stderr.contains("aws_secret_access_key = ***"), "{stderr}");
    assert!(!stderr.contains("wJalr"), "{stderr}");
}

/// A flag's bad value is a usage error, exit 2, for every flag alike.
#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [["--listen", "bogus"], ["--admin-listen", "bogus"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_offload"))
            .arg("check-config")
            .args(args)
            .env_remove("OFFLOAD_CONFIG")
            .output()
            .expect("run offload");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid value 'bogus'"), "{stderr}");
    }
    // A URL's password is not echoed back (it may end up in a CI or journal log).
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args([
            "check-config",
            "--upstream",
            "http://admin:S3cretPw@app:99999/",
        ])
        .env_remove("OFFLOAD_CONFIG")
        .output()
        .expect("run offload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: invalid value 'http://admin:***@app:99999/' for '--upstream <URL>': \
             invalid port number"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("S3cretPw"), "{stderr}");
}

#[test]
fn help_explains_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .arg("--help")
        .output()
        .expect("run offload");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--upstream",
        "--admin-listen",
        "--log-format",
        "check-config",
        "serve",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

/// The demo's listener taken (8080 often is): the error says how to pick another, rather
/// than naming only `server.listen`, a key the demo's user never set.
#[test]
fn a_demo_whose_port_is_taken_says_how_to_pick_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["demo", "--listen", &addr, "--data"])
        .arg(dir.path().join("data"))
        .arg("--site-dir")
        .arg(dir.path().join("site"))
        .output()
        .expect("run offload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "starting the demo on {addr} (offload demo --listen ADDR picks another)"
        )),
        "{stderr}"
    );
}

/// An error found after loading (a file that cannot be read) or about a table a variable
/// made names the variable, as errors about the keys themselves do.
#[test]
fn errors_name_the_variable_that_set_their_key() {
    let check = |vars: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_offload"))
            .arg("check-config")
            .env_remove("OFFLOAD_CONFIG")
            .env_remove("RUST_LOG")
            .envs(vars.iter().copied())
            .output()
            .expect("run offload");
        assert!(!out.status.success(), "{vars:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = check(&[("OFFLOAD_SERVER_TLS_LISTEN", "127.0.0.1:1")]);
    assert!(
        stderr.contains("server.tls: missing field `cert` (set by OFFLOAD_SERVER_TLS_LISTEN)"),
        "{stderr}"
    );
    let stderr = check(&[
        ("OFFLOAD_UPSTREAM_URL", "https://127.0.0.1:1"),
        ("OFFLOAD_UPSTREAM_TLS_CA_FILE", "/nonexistent/ca.pem"),
    ]);
    assert!(
        stderr.contains("offload: upstream.tls_ca_file: reading /nonexistent/ca.pem"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(set by OFFLOAD_UPSTREAM_TLS_CA_FILE)"),
        "{stderr}"
    );
    let stderr = check(&[
        ("OFFLOAD_SERVER_TLS_CERT", "/nonexistent/cert.pem"),
        ("OFFLOAD_SERVER_TLS_KEY", "/nonexistent/key.pem"),
    ]);
    assert!(
        stderr.contains("server.tls.cert: reading /nonexistent/cert.pem"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(set by OFFLOAD_SERVER_TLS_CERT)"),
        "{stderr}"
    );
}

/// `check-config` reads the certificate as a start would, and warns of what a start would
/// (as `nginx -t` prints its warnings): an expired certificate passes, with a warning.
#[test]
fn check_config_warns_of_an_expired_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let now = crate::support::unix_now();
    let (cert, key) = crate::support::certificate_valid(now - 90 * 86400, now - 86400);
    std::fs::write(&cert_path, cert).expect("write cert");
    std::fs::write(&key_path, key).expect("write key");
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .arg("check-config")
        .env_remove("OFFLOAD_CONFIG")
        .env_remove("RUST_LOG")
        .env("OFFLOAD_SERVER_TLS_CERT", &cert_path)
        .env("OFFLOAD_SERVER_TLS_KEY", &key_path)
        .output()
        .expect("run offload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!(
        "offload: warning: server.tls.cert {}: the certificate expired at ",
        cert_path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}
