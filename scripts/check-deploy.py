#!/usr/bin/env python3
"""Checks the YAML and JSON in deploy/: every file parses, the compose file has the services and
ports the README promises, and the Kubernetes manifest embeds deploy/k8s/proxy.toml as it is
and wires offload as a sidecar: its ports are the config's, its probes use ports it names,
and the pod's grace outlasts offload's shutdown delay and grace. The Dockerfile exposes and
probes the ports of the config it ships. Needs PyYAML (`pip install pyyaml` in a venv).

Usage: scripts/check-deploy.py [REPO_ROOT]; exits 1 listing every problem."""

import json
import pathlib
import re
import sys
import tomllib

import yaml

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)


docs = {}
for path in sorted((root / "deploy").rglob("*.y*ml")):
    try:
        docs[path.relative_to(root).as_posix()] = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as e:
        problems.append(f"{path}: {e}")

json_files = sorted((root / "deploy").rglob("*.json"))
for path in json_files:
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as e:
        problems.append(f"{path}: {e}")

compose = (docs.get("deploy/docker-compose.yml") or [{}])[0]
services = compose.get("services", {})
for name in ["mariadb", "wordpress", "minio", "createbucket", "offload"]:
    check(name in services, f"compose: no service {name}")
check("8080:8080" in services.get("offload", {}).get("ports", []), "compose: offload must publish 8080")
check("9000:9000" in services.get("minio", {}).get("ports", []), "compose: minio must publish 9000")
check(not services.get("wordpress", {}).get("ports"), "compose: wordpress must be reached only through offload")
offload_deps = services.get("offload", {}).get("depends_on", {})
check(offload_deps.get("createbucket", {}).get("condition") == "service_completed_successfully",
      "compose: offload must wait for the bucket")
check(services.get("offload", {}).get("build", {}).get("dockerfile") == "deploy/Dockerfile",
      "compose: offload builds deploy/Dockerfile")

k8s = [d for d in docs.get("deploy/k8s/wordpress-offload.yaml", []) if d]
kinds = {d["kind"]: d for d in k8s}
for kind in ["ConfigMap", "Secret", "Deployment", "Service"]:
    check(kind in kinds, f"k8s: no {kind}")
if "ConfigMap" in kinds:
    embedded = kinds["ConfigMap"]["data"]["proxy.toml"]
    check(embedded == (root / "deploy/k8s/proxy.toml").read_text(),
          "k8s: the ConfigMap's proxy.toml differs from deploy/k8s/proxy.toml")
if "Deployment" in kinds:
    containers = {c["name"]: c for c in kinds["Deployment"]["spec"]["template"]["spec"]["containers"]}
    check({"wordpress", "offload"} <= containers.keys(), "k8s: wordpress and offload containers")
    offload = containers.get("offload", {})
    ports = {p["name"]: p["containerPort"] for p in offload.get("ports", [])}
    check(ports.get("http") == 8080, "k8s: offload's http port is 8080")
    check(offload.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "k8s: liveness on /healthz")
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in offload.get("env", []) if "valueFrom" in e]
    check(refs and all(r == "offload-credentials" for r in refs), "k8s: credentials from the Secret")
def port_of(address):
    return int(address.rsplit(":", 1)[1])


def seconds(duration):
    """A humantime duration ("5s", "1m 30s", "250ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)\b", duration)
    return sum(float(number) * units[unit] for number, unit in parts)


k8s_config = tomllib.loads((root / "deploy/k8s/proxy.toml").read_text())
k8s_server = k8s_config.get("server", {})
if "Deployment" in kinds:
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    offload = containers.get("offload", {})
    named = {p["name"]: p["containerPort"] for p in offload.get("ports", [])}
    check(named.get("http") == port_of(k8s_server.get("listen", "0.0.0.0:8080")),
          "k8s: the http port is not server.listen's")
    admin = k8s_server.get("admin_listen", "127.0.0.1:9090")
    check(not admin.startswith("127."), "k8s: admin_listen on loopback: the kubelet probes the pod's IP")
    check(named.get("admin") == port_of(admin), "k8s: the admin port is not server.admin_listen's")
    for probe in ["readinessProbe", "livenessProbe"]:
        port = offload.get(probe, {}).get("httpGet", {}).get("port")
        check(port in named or port in named.values(), f"k8s: the {probe}'s port {port!r} is none of offload's")
    env = {e["name"]: e.get("value") for e in offload.get("env", [])}
    delay = seconds(env.get("OFFLOAD_SERVER_SHUTDOWN_DELAY") or k8s_server.get("shutdown_delay", "0s"))
    grace = seconds(env.get("OFFLOAD_SERVER_SHUTDOWN_GRACE") or k8s_server.get("shutdown_grace", "30s"))
    check(pod.get("terminationGracePeriodSeconds", 30) >= delay + grace,
          f"k8s: terminationGracePeriodSeconds under offload's shutdown_delay + shutdown_grace ({delay + grace:g} s)")
    stop = containers.get("wordpress", {}).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    slept = float(stop[1]) if len(stop) == 2 and stop[0] == "sleep" else 0
    check(slept >= delay, f"k8s: the app's preStop sleep ({slept:g} s) ends before offload's shutdown_delay ({delay:g} s)")

dockerfile = (root / "deploy/Dockerfile").read_text()
image_server = tomllib.loads((root / "deploy/compose.toml").read_text()).get("server", {})
exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()}
image_admin = port_of(image_server.get("admin_listen", "127.0.0.1:9090"))
check(port_of(image_server.get("listen", "0.0.0.0:8080")) in exposed, "Dockerfile: server.listen's port not exposed")
check(image_admin in exposed, "Dockerfile: server.admin_listen's port not exposed")
check(f"/dev/tcp/127.0.0.1/{image_admin}" in dockerfile, "Dockerfile: the HEALTHCHECK does not probe admin_listen")
user = re.search(r"^USER (\w+)", dockerfile, re.M)
created = re.search(r"useradd\b[^&]*?\s(\w+)\s*(?:&&|$)", dockerfile.replace("\\\n", " "), re.M)
check(user is not None and created is not None and user.group(1) == created.group(1),
      "Dockerfile: USER is not the user the image creates")

if "Service" in kinds:
    check(kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http", "k8s: the Service targets offload")

for p in problems:
    print(f"check-deploy: {p}")
print(f"check-deploy: {len(docs)} YAML and {len(json_files)} JSON files, {len(problems)} problems")
sys.exit(1 if problems else 0)
