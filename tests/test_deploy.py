"""The docker-compose file and the Kubernetes manifests cannot run here; they must stay valid.

Each file is parsed with PyYAML, each Locust command line with Locust's own parser (plus gateload's
options), and the master/worker wiring is checked: the master listens on 5557, the workers dial the
master's service name on that port, everyone runs the same locustfile with the same mounted profile,
and the profile in the ConfigMap loads with ``load_profile``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import locust.argument_parser
import pytest
import yaml
from needs import import_or_fail

from gateload.locustfiles.lib import options
from gateload.targets.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
LOCUSTFILE = "locustfiles/homeoffice.py"
MASTER_PORT = 5557


def parse_locust(argv: list[str]) -> argparse.Namespace:
    """A Locust command line as Locust parses it, with gateload's options; unknown flags fail."""
    if argv and argv[0] == "locust":
        argv = argv[1:]
    parser = locust.argument_parser.get_parser(default_config_files=[])
    options.add_arguments(parser)
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"Locust does not accept {argv}")


# --- docker compose -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_master_and_workers_are_wired(compose: dict[str, Any]) -> None:
    services = compose["services"]
    master, worker = services["master"], services["worker"]
    m, w = parse_locust(master["command"]), parse_locust(worker["command"])
    assert m.master and not m.worker and m.master_bind_port == MASTER_PORT
    assert w.worker and not w.master
    assert w.master_host == "master" and w.master_host in services  # the service name resolves
    assert w.master_port == m.master_bind_port
    assert str(MASTER_PORT) in [str(p) for p in master["expose"]]
    assert m.locustfile == w.locustfile == LOCUSTFILE and (ROOT / LOCUSTFILE).is_file()
    # The master waits for exactly the workers compose starts.
    assert m.expect_workers == worker["deploy"]["replicas"] >= 2
    assert "master" in worker["depends_on"]
    assert master["image"] == worker["image"]


def test_compose_image_and_mounts_exist(compose: dict[str, Any]) -> None:
    master, worker = compose["services"]["master"], compose["services"]["worker"]
    build = master["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile.is_file()
    assert 'ENTRYPOINT ["locust"]' in dockerfile.read_text()  # so `command` is Locust's arguments
    for service in (master, worker):
        args = parse_locust(service["command"])
        mounts = {v["target"]: v for v in service["volumes"]}
        profile_dir = str(Path(args.profile).parent)
        assert profile_dir in mounts and mounts[profile_dir]["read_only"]
        assert (DEPLOY / mounts[profile_dir]["source"]).is_dir()
    results = parse_locust(master["command"]).results_dir
    assert results in {v["target"] for v in master["volumes"]}  # run folders land on the host


def test_compose_file_matches_the_compose_specification() -> None:
    import_or_fail("check_jsonschema", "pip install -e .[dev] (check-jsonschema)")
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run(
        [*argv, str(DEPLOY / "docker-compose.yml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Kubernetes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} defined twice"
            docs[key] = doc
    return docs


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_objects_are_well_formed(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = {kind for kind, _ in k8s}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    for (kind, name), doc in k8s.items():
        expected = "apps/v1" if kind == "Deployment" else "v1"
        assert doc["apiVersion"] == expected, name
        if kind == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), f"{name}: selector must match its pods"
            volumes = {v["name"] for v in doc["spec"]["template"]["spec"].get("volumes", [])}
            mounted = {m["name"] for m in _container(doc).get("volumeMounts", [])}
            assert mounted <= volumes, f"{name}: mounts a volume it does not define"


def test_k8s_manifests_match_the_kubernetes_schema(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    kv = import_or_fail("kubernetes_validate", "pip install -e .[dev] (kubernetes-validate)")
    for key, doc in k8s.items():
        try:
            # strict: an unknown or misspelt field (replica: 2) is an error, as kubectl would report it
            kv.validate(doc, kv.latest_version(), strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{key}: {exc}")


def test_k8s_master_service_and_workers_are_wired(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    master, worker = k8s[("Deployment", "locust-master")], k8s[("Deployment", "locust-worker")]
    m, w = parse_locust(_container(master)["command"]), parse_locust(_container(worker)["command"])
    assert m.master and m.master_bind_port == MASTER_PORT and master["spec"]["replicas"] == 1
    assert w.worker and worker["spec"]["replicas"] >= 2
    assert m.locustfile == w.locustfile == LOCUSTFILE
    # Workers dial the Service by name, on the port the Service forwards to the master's 5557.
    service = k8s[("Service", w.master_host)]
    master_labels = master["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= master_labels.items()
    assert not service["spec"]["selector"].items() <= worker_labels.items()
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == w.master_port]
    container_ports = {p["name"]: p["containerPort"] for p in _container(master)["ports"]}
    assert container_ports[port["targetPort"]] == m.master_bind_port == MASTER_PORT


def test_k8s_profile_configmap_is_mounted_and_loads(
    k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    for name in ("locust-master", "locust-worker"):
        deployment = k8s[("Deployment", name)]
        container = _container(deployment)
        args = parse_locust(container["command"])
        profile = Path(args.profile)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        config_map = volumes[mounts[str(profile.parent)]]["configMap"]["name"]
        data = k8s[("ConfigMap", config_map)]["data"]
        assert profile.name in data, f"{name}: --profile names a key the ConfigMap lacks"
        copy = tmp_path / profile.name
        copy.write_text(data[profile.name])
        loaded = load_profile(copy)  # strict: a typo in the manifest's profile fails here
        assert loaded.target.kind == "real"
        # The credentials file lives in the mounted Secret, not in the ConfigMap.
        secret_dir = str(Path(loaded.credentials.file).parent)
        assert "secret" in volumes[mounts[secret_dir]]
