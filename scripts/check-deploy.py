#!/usr/bin/env python3
"""Checks the YAML and JSON in deploy/: every file parses, the compose file has the services and
ports the README promises, and the Kubernetes manifest embeds deploy/k8s/proxy.toml as it is
and wires offload as a sidecar. Needs PyYAML (`pip install pyyaml` in a venv).

Usage: scripts/check-deploy.py [REPO_ROOT]; exits 1 listing every problem."""

import json
import pathlib
import sys

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
if "Service" in kinds:
    check(kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http", "k8s: the Service targets offload")

for p in problems:
    print(f"check-deploy: {p}")
print(f"check-deploy: {len(docs)} YAML and {len(json_files)} JSON files, {len(problems)} problems")
sys.exit(1 if problems else 0)
