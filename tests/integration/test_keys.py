"""``metastream keys generate`` makes a pair the worker signs with and the edge verifies with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from connectors.admin import ensure_topics
from connectors.edge import EdgeSubscriber
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from metastream_edge.codec import ModelHeader, encode_model
from pipeline.tools.brokers import ApacheKafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METASTREAM = [sys.executable, "-m", "pipeline.tools.cli"]


def settings_file(kafka_broker: ApacheKafkaBroker, tmp_path: Path) -> Path:
    """Settings with topic names and an app id no other test uses."""
    run = uuid.uuid4().hex[:10]
    topics = {f"topic_{t}": f"k-{run}.{t}" for t in ("readings", "models", "meta", "deltas", "events")}
    settings = Settings.load(
        environ={},
        broker=f"kafka://{kafka_broker.bootstrap}",
        app_id=f"keys-test-{run}",
        partitions=1,
        n_features=4,
        micro_batch=200,
        topic_deadletter=f"k-{run}.deadletter",
        **topics,
    )
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(asdict(settings)))
    return path


def model(device: str, version: int) -> bytes:
    """An unsigned model payload of ``device`` (4 features, one small hidden layer)."""
    header = ModelHeader(device, version, 0, "regression", 4, 1, (4,))
    arrays = {k: np.full(s, 0.1, np.float32) for k, s in header.param_shapes().items()}
    arrays |= {
        f"norm.{k}": np.full(n, v, np.float32)
        for k, n, v in [("x_mean", 4, 0.0), ("x_std", 4, 1.0), ("y_mean", 1, 0.0), ("y_std", 1, 1.0)]
    }
    return encode_model(arrays, header)


def metastream(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*METASTREAM, *argv], capture_output=True, text=True, timeout=timeout)


def test_generated_keys_sign_at_the_worker_and_verify_at_the_edge(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: two pairs, the worker signs with "worker"; the "other" public key must not be trusted for it
    keys = tmp_path / "keys"
    for name in ("worker", "other"):
        made = metastream("keys", "generate", "--out-dir", str(keys), "--name", name)
        assert made.returncode == 0, made.stderr
    assert (keys / "worker.key.pem").stat().st_mode & 0o777 == 0o600
    again = metastream("keys", "generate", "--out-dir", str(keys))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    settings = settings_file(kafka_broker, tmp_path)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                *METASTREAM,
                "worker",
                "--settings",
                str(settings),
                "--signing-key",
                str(keys / "worker.key.pem"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "METASTREAM_TORCH_THREADS": "1"},
        )
    try:
        # Execute: readings of two devices; each gets a first (new-device) model
        produced = metastream("produce", "--settings", str(settings), "--devices", "2", "--readings", "600")
        assert produced.returncode == 0, produced.stderr
        trusted = ["--settings", str(settings), "--device", "dev-0000", "--device", "dev-0001"]
        deadline = time.monotonic() + 120
        while True:
            edge = metastream(
                "edge", *trusted, "--trusted-key", str(keys / "worker.pub.pem"), "--duration", "5"
            )
            if edge.stdout.count("accepted") >= 2 or time.monotonic() > deadline:
                break
        tail = ["--settings", str(settings), "--from-beginning", "--idle-timeout", "5"]
        models = metastream("tail", "models", *tail, "--trusted-key", str(keys / "worker.pub.pem"))
        events = metastream("tail", "events", *tail, "--device", "dev-0001", "--json")
        stranger = metastream(
            "edge", *trusted, "--trusted-key", str(keys / "other.pub.pem"), "--duration", "5"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)

    # Assert
    text = log.read_text(errors="replace")
    assert "ephemeral" not in text  # the generated key was used, not a demo key
    accepted = [ln for ln in edge.stdout.splitlines() if ln.endswith("accepted")]
    assert {ln.split()[0] for ln in accepted} == {"dev-0000", "dev-0001"}, edge.stdout + text[-3000:]
    refused = stranger.stdout.splitlines()[:-1]  # the last line is "running versions: …"
    assert refused and all("refused" in ln and "unknown" in ln for ln in refused), stranger.stdout
    assert stranger.stdout.splitlines()[-1] == "running versions: dev-0000 -, dev-0001 -"
    # metastream tail: every model with its version, parent θ and a good signature; one device's events
    lines = models.stdout.splitlines()
    assert lines and all(ln.endswith("signature ok") and " parent θ v" in ln for ln in lines), models
    assert {ln.split()[0] for ln in lines} == {"dev-0000", "dev-0001"}
    assert {ln.split()[1] for ln in lines if ln.startswith("dev-0000")} >= {"v1"}
    kinds = [json.loads(ln) for ln in events.stdout.splitlines()]
    assert kinds and {e["device_id"] for e in kinds} == {"dev-0001"}, events
    assert "adapted" in {e["type"] for e in kinds}


def test_root_signed_key_sets_rotate_and_revoke_the_edges_keys(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: a root pair (signs key sets only), the worker key in use and the one rotated in
    keys = tmp_path / "keys"
    for name in ("root", "old", "new"):
        assert metastream("keys", "generate", "--out-dir", str(keys), "--name", name).returncode == 0
    settings_path = settings_file(kafka_broker, tmp_path)
    settings = Settings.load(str(settings_path))
    ensure_topics(settings)
    old, new = (Signer.from_file(keys / f"{n}.key.pem") for n in ("old", "new"))
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")

    def publish_model(signer: Signer, version: int) -> None:
        producer.send(settings.topic_models, key=b"dev-1", value=signer.seal(model("dev-1", version))).get(30)

    def sign_and_publish(version: int, *extra: str) -> None:
        out = tmp_path / f"keyset-v{version}.bin"
        signed = metastream(
            "keys",
            "sign-set",
            "--root-key",
            str(keys / "root.key.pem"),
            "--version",
            str(version),
            "--out",
            str(out),
            *extra,
        )
        assert signed.returncode == 0, signed.stderr
        published = metastream("keys", "publish-set", str(out), "--settings", str(settings_path))
        assert published.returncode == 0, published.stderr

    publish_model(old, 1)
    publish_model(new, 2)  # the rotated-in key's model, before any key set trusts it
    sign_and_publish(1, "--trust", str(keys / "old.pub.pem"), "--trust", str(keys / "new.pub.pem"))
    forged = tmp_path / "forged.bin"  # signed by the worker key, not the root
    made = metastream(
        "keys",
        "sign-set",
        "--root-key",
        str(keys / "old.key.pem"),
        "--version",
        "9",
        "--trust",
        str(keys / "old.pub.pem"),
        "--out",
        str(forged),
    )
    assert made.returncode == 0, made.stderr
    assert metastream("keys", "publish-set", str(forged), "--settings", str(settings_path)).returncode == 0
    # Execute: an edge that trusts only the old key and the root
    verifier = Verifier.from_files(keys / "old.pub.pem")
    root = Verifier.from_files(keys / "root.pub.pem")
    with EdgeSubscriber(settings, ["dev-1"], verifier, root=root) as sub:
        sub.run(until=lambda: sub.current_version("dev-1") == 2, timeout_s=30)
        rotated_in = sub.current_version("dev-1")
        sign_and_publish(2, "--trust", str(keys / "new.pub.pem"), "--revoke", str(keys / "old.pub.pem"))
        sub.run(until=lambda: sub.state.keysets is not None and sub.state.keysets.version == 2, timeout_s=30)
        publish_model(old, 3)
        publish_model(new, 4)
        sub.run(until=lambda: sub.current_version("dev-1") == 4, timeout_s=30)
        log = [str(d) for d in sub.state.log]
    producer.close()
    # Assert
    assert rotated_in == 2
    assert "__keyset__ v? refused not_root_signed" in log, log
    assert log.count("__keyset__ v? refused not_root_signed") == 1, log  # read once, before any model
    # A revoked key's envelope is refused before its payload is read: no version is shown.
    assert log[-2:] == ["dev-1 v? refused revoked_key", "dev-1 v4 accepted"], log
    assert sub.state.keysets is not None and sub.state.keysets.version == 2
