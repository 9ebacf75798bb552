"""A throw-away deployment on a running broker: scratch settings and a worker subprocess.

What the demo, the benchmarks, the soak and the integration tests share
(the tests through :mod:`tests.harness`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from connectors.admin import ensure_topics
from connectors.settings import Settings
from connectors.signing import Signer


def scratch_settings(bootstrap: str, work: Path, prefix: str, partitions: int = 4) -> Settings:
    """Settings for a throw-away run: a fresh signing key in ``work``, own app id and topics.

    Runs sharing one broker (tests, benchmarks, demos) never see each other's messages.
    """
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    Signer.generate().save(work / "worker.key.pem", work / "worker.pub.pem")
    topics = ("readings", "models", "meta", "deltas", "events", "deadletter")
    return Settings.load(
        environ={},
        broker=f"kafka://{bootstrap}",
        app_id=tag,
        partitions=partitions,
        signing_key=str(work / "worker.key.pem"),
        trusted_keys=str(work / "worker.pub.pem"),
        **{f"topic_{t}": f"{tag}.{t}" for t in topics},
    )


@contextlib.contextmanager
def running_worker(settings: Settings, work: Path, *extra_args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A ``python -m pipeline.worker`` subprocess for ``settings``, stopped (SIGTERM) on exit.

    Creates the topics first; the worker logs to ``work/worker.log``.
    """
    (work / "settings.json").write_text(json.dumps(dataclasses.asdict(settings)))
    ensure_topics(settings)
    say("starting a stream worker (a first group join can take ~20 s on the embedded broker)")
    with open(work / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", "--settings", str(work / "settings.json"), *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)
