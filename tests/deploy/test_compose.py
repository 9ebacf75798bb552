"""deploy/compose.yaml: loaded by compose-go (what ``docker compose`` loads files with), then cross-checked.

No Docker engine runs here: the file is validated, not started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from connectors.settings import Settings
from pipeline.tools.brokers import KAFKA_VERSION
from pipeline.tools.produce import synthetic_source
from tests.deploy.manifests import (
    DEPLOY,
    NOT_SETTINGS,
    dockerfile_instructions,
    kafka_env_to_config,
    parse_cli,
)

COMPOSE = DEPLOY / "compose.yaml"
ROLES = {"worker-1": "worker", "worker-2": "worker", "producer": "produce", "edge": "edge"}


def load_compose(validators: Path, path: Path = COMPOSE) -> tuple[int, dict[str, Any], str]:
    """``(exit code, canonical project, stderr)`` of compose-check on ``path``."""
    proc = subprocess.run(
        [str(validators / "compose-check"), str(path)], capture_output=True, text=True, env={"PATH": ""}
    )
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else {}, proc.stderr


@pytest.fixture(scope="module")
def project(validators: Path) -> dict[str, Any]:
    code, loaded, stderr = load_compose(validators)
    assert code == 0, stderr
    return loaded


def settings_of(service: dict[str, Any]) -> Settings:
    return Settings.load(environ=service["environment"])


@pytest.mark.slow
def test_compose_file_loads_with_the_services_the_issue_asks_for(project: dict[str, Any]) -> None:
    # Prepare
    services = project["services"]
    # Execute
    images = {name: s["image"] for name, s in services.items()}
    # Assert
    assert sorted(services) == ["edge", "kafka", "keygen", "producer", "worker-1", "worker-2"]
    assert images["kafka"] == f"apache/kafka:{KAFKA_VERSION}"
    assert {images[n] for n in (*ROLES, "keygen")} == {"metastream:0.1.0"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "    kafka:\n      condition:", "    kafkaa:\n      condition:", "kafkaa", id="depends_on"
        ),
        pytest.param("    cpus: 1.0\n", "    cpus: one\n", "cpus", id="type"),
        pytest.param(
            "    stop_grace_period: 60s\n", "    stop_graceperiod: 60s\n", "stop_graceperiod", id="key"
        ),
    ],
)
def test_compose_check_rejects_a_broken_copy(
    validators: Path, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    # Prepare: the real file with one mistake, beside a copy of its env_file
    text = COMPOSE.read_text()
    assert old in text
    (tmp_path / "compose.yaml").write_text(text.replace(old, new, 1))
    shutil.copy(DEPLOY / "metastream.env", tmp_path)
    # Execute
    code, _, stderr = load_compose(validators, tmp_path / "compose.yaml")
    # Assert
    assert code == 1 and expected in stderr, stderr


@pytest.mark.slow
def test_every_metastream_service_runs_a_valid_command_line(project: dict[str, Any]) -> None:
    # Prepare: the image's entrypoint is `metastream` (Dockerfile)
    entrypoint = [a for i, a, _ in dockerfile_instructions(DEPLOY / "Dockerfile") if i == "ENTRYPOINT"]
    # Execute
    commands = {name: parse_cli(project["services"][name]["command"]).command for name in ROLES}
    # Assert
    assert entrypoint == [("metastream",)]
    assert all(project["services"][name]["entrypoint"] is None for name in ROLES)
    assert commands == ROLES


@pytest.mark.slow
def test_environment_holds_only_settings_and_points_at_the_kafka_service(project: dict[str, Any]) -> None:
    # Prepare
    services = project["services"]
    kafka_env = services["kafka"]["environment"]
    fields = {f"METASTREAM_{name.upper()}" for name in Settings.__dataclass_fields__}
    # Execute
    unknown = {k for name in ROLES for k in services[name]["environment"] if k.startswith("METASTREAM_")}
    unknown -= fields | NOT_SETTINGS
    bootstraps = {settings_of(services[name]).bootstrap for name in ROLES}
    advertised = dict(a.split("://") for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    # Assert
    assert unknown == set()
    assert bootstraps == {advertised["PLAINTEXT"]} == {f"{services['kafka']['hostname']}:9092"}
    assert {settings_of(services[n]).app_id for n in ROLES} == {"metastream"}
    assert {services[n]["environment"]["METASTREAM_TORCH_THREADS"] for n in ROLES} == {"1"}


@pytest.mark.slow
def test_kafka_runs_kraft_on_one_node(project: dict[str, Any]) -> None:
    # Prepare
    env = project["services"]["kafka"]["environment"]
    # Execute
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    listener_names = {part.split("://")[0] for part in env["KAFKA_LISTENERS"].split(",")}
    # Assert
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert voters == [f"{env['KAFKA_NODE_ID']}@{project['services']['kafka']['hostname']}:9093"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert listener_names == {n.split(":")[0] for n in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert project["services"]["kafka"]["healthcheck"]["test"][0] == "CMD"


@pytest.mark.slow
def test_workers_sign_with_the_key_keygen_writes_and_the_edge_trusts_its_public_half(
    project: dict[str, Any],
) -> None:
    # Prepare
    services = project["services"]
    keygen_script = services["keygen"]["command"][0]
    keygen_volumes = {v["target"]: v["source"] for v in services["keygen"]["volumes"]}
    # Execute
    written = re.findall(r'Path\("([^"]+)"\)', keygen_script)
    signing = {settings_of(services[n]).signing_key for n in ("worker-1", "worker-2")}
    trusted = settings_of(services["edge"]).trusted_keys

    def volume_holding(service: str, path: str) -> str:
        mounts = [v for v in services[service]["volumes"] if path.startswith(v["target"] + "/")]
        assert len(mounts) == 1, (service, path)
        return str(mounts[0]["source"])

    # Assert
    assert written == ["/keys/worker.key.pem", "/keys/worker.pub.pem"]
    assert signing == {written[0]} and trusted == written[1]
    assert {volume_holding(n, written[0]) for n in ("worker-1", "worker-2")} == {keygen_volumes["/keys"]}
    assert volume_holding("edge", trusted) == keygen_volumes["/keys"]
    for name in ("worker-1", "worker-2", "edge", "producer"):
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["keygen"]["condition"] == "service_completed_successfully"


@pytest.mark.slow
def test_edge_follows_devices_the_producer_sends(project: dict[str, Any]) -> None:
    # Prepare
    produce = parse_cli(project["services"]["producer"]["command"])
    edge = parse_cli(project["services"]["edge"]["command"])
    # Execute: the devices of the first readings the producer sends (same seed, same source)
    sent = {r.device_id for r in synthetic_source(produce.devices, 20 * produce.devices, produce.seed)}
    # Assert
    assert set(edge.device) <= sent and edge.device == ["dev-0000", "dev-0001"]
    assert produce.source == "synthetic" and produce.rate == 2000.0


@pytest.mark.slow
def test_one_core_per_worker_and_distinct_worker_ids(project: dict[str, Any]) -> None:
    # Prepare
    workers = [project["services"][n] for n in ("worker-1", "worker-2")]
    # Execute
    ids = [parse_cli(w["command"]).worker_id for w in workers]
    # Assert
    assert [w["cpus"] for w in workers] == [1.0, 1.0]
    assert ids == ["worker-1", "worker-2"]


@pytest.mark.slow
def test_kafka_environment_names_real_broker_settings(
    project: dict[str, Any], kafka_configs: set[str]
) -> None:
    # Prepare
    env = project["services"]["kafka"]["environment"]
    # Execute
    unknown = {k for k in env if k.startswith("KAFKA_") and kafka_env_to_config(k) not in kafka_configs}
    # Assert
    assert unknown == set()
    assert kafka_env_to_config("KAFKA_AUTO_CREATE_TOPIC_ENABLE") not in kafka_configs  # a typo is caught


def test_keygen_writes_a_key_pair_workers_and_edges_can_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: keygen's own script from compose.yaml, with /keys moved into tmp_path and
    # chown recorded instead of done (the test is not root)
    import os

    import yaml

    from connectors.signing import Signer, Verifier

    script = yaml.safe_load(COMPOSE.read_text())["services"]["keygen"]["command"][0]
    script = script.replace('"/keys/', f'"{tmp_path}/')
    owners: list[tuple[str, int, int]] = []
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: owners.append((Path(path).name, uid, gid)))
    # Execute: twice, as on a second `docker compose up`
    exec(compile(script, "keygen", "exec"), {})
    first = (tmp_path / "worker.key.pem").read_bytes()
    exec(compile(script, "keygen", "exec"), {})
    # Assert
    signer = Signer.from_file(tmp_path / "worker.key.pem")
    assert Verifier.from_files(tmp_path / "worker.pub.pem").open(signer.seal(b"model")) == b"model"
    assert (tmp_path / "worker.key.pem").read_bytes() == first  # an existing key is kept
    assert (tmp_path / "worker.key.pem").stat().st_mode & 0o777 == 0o600
    assert owners == [("worker.key.pem", 10001, 10001), ("worker.pub.pem", 10001, 10001)] * 2
