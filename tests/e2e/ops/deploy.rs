//! The files in `deploy/`: configs validate with the real binary; YAML, the systemd unit and
//! the load-balancer configs are checked by their own tools where those are installed (a
//! message says which were skipped).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_files(ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(repo().join("deploy"))
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn have(tool: &str, probe: &[&str]) -> bool {
    let found = Command::new(tool)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("deploy: {tool} not available here: its check is skipped");
    }
    found
}

#[test]
fn every_deploy_config_passes_check_config() {
    let configs = deploy_files("toml");
    assert!(configs.len() >= 4, "{configs:?}");
    for config in configs {
        let out = run_offload(&["check-config", "--config", config.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}: {}", config.display(), text(&out));
    }
}

#[test]
fn deploy_yaml_parses_and_has_what_the_readme_promises() {
    if !have("python3", &["-c", "import yaml"]) {
        return;
    }
    let out = Command::new("python3")
        .arg(repo().join("scripts/check-deploy.py"))
        .arg(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    for needle in [
        "FROM rust:1.95-slim-bookworm AS build",
        "scripts/build-release.sh",
        "FROM debian:bookworm-slim",
        "USER offload",
        "HEALTHCHECK",
        "/healthz",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The image's binary is the profile-guided build, both of whose builds use Cargo.lock.
    let build = std::fs::read_to_string(repo().join("scripts/build-release.sh")).unwrap();
    assert_eq!(build.matches("-- --locked --bin offload").count(), 2);
    // The image's default config must keep admin reachable by the in-container HEALTHCHECK.
    let config = std::fs::read_to_string(repo().join("deploy/compose.toml")).unwrap();
    assert!(config.contains("admin_listen = \"127.0.0.1:9090\""));
}

/// `systemd-analyze verify` on the unit, its ExecStart pointed at the built binary (verify
/// insists the program exists).
#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/offload.service")).unwrap();
    for needle in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=",
        "PrivateTmp=yes",
        "ReadWritePaths=",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle:?}");
    }
    let socket = std::fs::read_to_string(repo().join("deploy/systemd/offload.socket")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offload.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/offload", offload_bin())).unwrap();
    std::fs::write(dir.path().join("offload.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .arg(dir.path().join("offload.socket"))
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        !printed.contains("offload.service:") && !printed.contains("offload.socket:"),
        "warnings about the units: {printed}"
    );
}

/// offload takes systemd's socket only in place of the listener on the same address: the
/// socket unit must listen where the unit's config says.
#[test]
fn systemd_socket_listens_where_the_config_does() {
    let socket = std::fs::read_to_string(repo().join("deploy/systemd/offload.socket")).unwrap();
    let config = std::fs::read_to_string(repo().join("deploy/systemd/proxy.toml")).unwrap();
    let listen_streams: Vec<&str> = socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .collect();
    let config: toml::Table = config.parse().unwrap();
    let listen = config["server"]["listen"].as_str().unwrap();
    assert_eq!(listen_streams, [listen]);
}

#[test]
fn load_balancer_configs_check() {
    let lb = repo().join("deploy/lb");
    if have("haproxy", &["-v"]) {
        let out = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(lb.join("haproxy.cfg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    if have("nginx", &["-v"]) {
        let out = Command::new("nginx")
            .args(["-t", "-c"])
            .arg(lb.join("nginx.conf"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}
