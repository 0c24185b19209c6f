//! The files in `deploy/`: configs validate with the real binary; YAML, the systemd unit and
//! the load-balancer configs are checked by their own tools where those are installed (a
//! message says which were skipped).

use std::collections::BTreeMap;
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

/// The checks find what they look for: each mistake below, made in a copy of deploy/, is
/// named.
#[test]
fn check_deploy_names_each_mistake() {
    if !have("python3", &["-c", "import yaml"]) {
        return;
    }
    let manifest = "deploy/k8s/wordpress-offload.yaml";
    for (file, from, to, named) in [
        (
            manifest,
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 20",
            "terminationGracePeriodSeconds under offload's shutdown_delay + shutdown_grace (35 s)",
        ),
        (
            manifest,
            "containerPort: 9090",
            "containerPort: 9091",
            "the admin port is not server.admin_listen's",
        ),
        (
            manifest,
            "port: admin",
            "port: metrics",
            "the readinessProbe's port 'metrics' is none of offload's",
        ),
        (
            manifest,
            "command: [\"sleep\", \"15\"]",
            "command: [\"sleep\", \"2\"]",
            "the app's preStop sleep (2 s) ends before offload's shutdown_delay (5 s)",
        ),
        (
            "deploy/k8s/proxy.toml",
            "admin_listen = \"0.0.0.0:9090\"",
            "admin_listen = \"127.0.0.1:9090\"",
            "admin_listen on loopback",
        ),
        (
            "deploy/Dockerfile",
            "/dev/tcp/127.0.0.1/9090",
            "/dev/tcp/127.0.0.1/9091",
            "the HEALTHCHECK does not probe admin_listen",
        ),
        (
            "deploy/Dockerfile",
            "USER offload:offload",
            "USER root",
            "USER is not the user the image creates",
        ),
    ] {
        let copy = tempfile::tempdir().unwrap();
        for entry in walkdir::WalkDir::new(repo().join("deploy")) {
            let entry = entry.unwrap();
            let to_path = copy.path().join(entry.path().strip_prefix(repo()).unwrap());
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&to_path).unwrap();
            } else {
                std::fs::copy(entry.path(), &to_path).unwrap();
            }
        }
        let path = copy.path().join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        assert!(original.contains(from), "{file} lacks {from:?}");
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        let out = Command::new("python3")
            .arg(repo().join("scripts/check-deploy.py"))
            .arg(copy.path())
            .output()
            .unwrap();
        let printed = text(&out);
        assert!(!out.status.success(), "{from} -> {to}: passed\n{printed}");
        assert!(printed.contains(named), "{from} -> {to}: {printed}");
    }
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

/// The Prometheus config loads the alerting rules (`promtool check config` checks both), and
/// each alert fires on the failure it names and stays quiet on a healthy instance
/// (`promtool test rules`, deploy/prometheus/offload-alerts.test.yml).
#[test]
fn prometheus_rules_check_and_pass_their_tests() {
    if !have("promtool", &["--version"]) {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "offload-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "promtool {args:?}: {}", text(&out));
    }
}

/// Every series the alerting rules and their tests select is one offload exports, with the
/// labels they match on: a renamed metric or label would leave an alert that never fires.
#[tokio::test]
async fn prometheus_rules_select_what_offload_exports() {
    let (app, proxy) = crate::support::app_and_proxy(|_| {}).await;
    let get = |path| crate::support::client().get(proxy.url(path)).send();
    let _ = get("/counted").await.expect("request").bytes().await;
    // An upstream error, so that its family has a sample with labels.
    drop(app);
    let _ = get("/refused").await.expect("502").bytes().await;
    let exported = proxy
        .metrics_until("offload_upstream_errors_total{cause=\"connect\"} 1")
        .await;
    let exported = exported_series(&exported);
    for file in ["offload-alerts.yml", "offload-alerts.test.yml"] {
        let rules = std::fs::read_to_string(repo().join("deploy/prometheus").join(file)).unwrap();
        let selected = selected_series(&rules);
        assert!(selected.len() >= 8, "{file}: {selected:?}");
        for (name, labels) in selected {
            let Some(known) = exported.get(&name) else {
                panic!(
                    "{file}: offload exports no {name}; it has {:?}",
                    exported.keys()
                );
            };
            // A family with no sample yet (no error counted) shows its name only.
            if known.is_empty() {
                continue;
            }
            for label in labels {
                assert!(
                    ["job", "instance"].contains(&label.as_str()) || known.contains(&label),
                    "{file}: {name} has no label {label:?} (it has {known:?})"
                );
            }
        }
    }
}

/// Each sample name in a Prometheus text exposition with its label names; the samples of a
/// family with none yet (`# TYPE x counter`: `x_total`; `histogram`: `x_bucket`, `x_count`,
/// `x_sum`) with none.
fn exported_series(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut series: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let (name, kind) = family.split_once(' ').unwrap_or((family, ""));
            let samples: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            for suffix in samples {
                series.entry(format!("{name}{suffix}")).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels) = split_selector(line);
        let known = series.entry(name.to_string()).or_default();
        for label in labels {
            if !known.contains(&label) {
                known.push(label);
            }
        }
    }
    series
}

/// The offload and process series named in `rules` (PromQL expressions and test series),
/// each with the label names it matches on.
fn selected_series(rules: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = rules;
    while let Some(at) = ["offload_", "process_"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let preceded_by_name = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let (name, labels) = split_selector(&rest[at..]);
        let consumed = at + name.len().max(1);
        rest = &rest[consumed..];
        if preceded_by_name || name.ends_with('_') {
            continue;
        }
        found.push((name.to_string(), labels));
    }
    found
}

/// A series selector's metric name and label names (`name{a="1",b=~"x|y"}` → `name`,
/// `[a, b]`).
fn split_selector(s: &str) -> (&str, Vec<String>) {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (name, after) = s.split_at(end);
    let Some(inside) = after.strip_prefix('{').and_then(|a| a.split('}').next()) else {
        return (name, Vec::new());
    };
    let labels = inside
        .split(',')
        .filter_map(|matcher| {
            let label = matcher.split(['=', '!']).next()?.trim();
            (!label.is_empty()).then(|| label.to_string())
        })
        .collect();
    (name, labels)
}
