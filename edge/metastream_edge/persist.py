"""The device's learning state on local disk: written atomically, checked when read.

A power cut may strike at any moment on a device.  :func:`save_state`
writes the whole state (weights φ, θ and its version, the buffer of recent
readings, the scaler, the drift detector, counters) to a temporary file in
the same directory, flushes it to the disk (``fsync``), renames it over the
state file (atomic on POSIX) and flushes the directory entry.  So the file
on disk is always either the previous complete state or the new one: a cut
loses at most the readings since the last save.  The file is a safetensors
payload with a sha256 over arrays and header (:mod:`metastream_edge.codec`),
so :func:`load_state` refuses a corrupt or truncated file with
:class:`StateError` instead of running on garbage.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from metastream_edge.codec import CodecError, open_arrays, seal_arrays
from metastream_edge.drift import ErrorDriftDetector
from metastream_edge.learner import EdgeConfig, OnDeviceLearner
from metastream_edge.scaling import RunningScaler, TaskScaler

STATE_SCHEMA = "metastream-edge.state/1"
TMP_SUFFIX = ".tmp"


class StateError(ValueError):
    """A state file that is corrupt, truncated, or of another schema."""


def encode_state(learner: OnDeviceLearner) -> bytes:
    """The learner's whole state as one checked payload."""
    arrays: dict[str, np.ndarray] = {"buffer.x": learner.buffer.x, "buffer.y": learner.buffer.y}
    for prefix, params in (("params", learner.params), ("theta", learner.theta)):
        for k, v in (params or {}).items():
            arrays[f"{prefix}.{k}"] = v
    scalers: dict[str, Any] = {}
    for name, scaler in (("x", learner.scaler.x), ("y", learner.scaler.y)):
        count, mean, m2 = scaler.moments()
        arrays[f"scaler.{name}.mean"], arrays[f"scaler.{name}.m2"] = mean, m2
        scalers[name] = count
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(learner.cfg).items()}
    fields = {
        "schema": STATE_SCHEMA,
        "config": cfg,
        "scaler_counts": scalers,
        "scaler_frozen": learner.scaler.frozen,
        "buffer": [learner.buffer.count, learner.buffer.next],
        "detector": learner.detector.to_dict(),
        "theta_version": learner.theta_version,
        "model_version": learner.model_version,
        "pending": learner.pending,
        "counters": [learner.new_readings, learner.n_seen, learner.n_drifts, learner.n_adaptations],
    }
    return seal_arrays(arrays, fields)


def decode_state(payload: bytes) -> OnDeviceLearner:
    """Inverse of :func:`encode_state`; :class:`StateError` if anything does not check out."""
    try:
        arrays, meta = open_arrays(payload, "state")
        f = {k: json.loads(v) for k, v in meta.items()}
    except (CodecError, ValueError) as exc:
        raise StateError(f"corrupt state: {exc}") from exc
    if f.get("schema") != STATE_SCHEMA:
        raise StateError(f"unknown state schema {f.get('schema')!r}; this device reads {STATE_SCHEMA}")
    try:
        cfg_fields = dict(f["config"])
        cfg_fields["hidden"] = tuple(cfg_fields["hidden"])
        learner = OnDeviceLearner(EdgeConfig(**cfg_fields))
        learner.scaler = TaskScaler(learner.cfg.task, learner.cfg.n_features, frozen=f["scaler_frozen"])
        for name in ("x", "y"):
            scaler = RunningScaler(len(arrays[f"scaler.{name}.mean"]))
            scaler.restore(
                f["scaler_counts"][name], arrays[f"scaler.{name}.mean"], arrays[f"scaler.{name}.m2"]
            )
            setattr(learner.scaler, name, scaler)
        learner.buffer.x, learner.buffer.y = np.array(arrays["buffer.x"]), np.array(arrays["buffer.y"])
        learner.buffer.count, learner.buffer.next = f["buffer"]
        learner.detector = ErrorDriftDetector.from_dict(f["detector"])
        for prefix in ("params", "theta"):
            part = {
                k[len(prefix) + 1 :]: np.array(v) for k, v in arrays.items() if k.startswith(prefix + ".")
            }
            setattr(learner, prefix, part or None)
        learner.theta_version, learner.model_version = f["theta_version"], f["model_version"]
        learner.pending = f["pending"]
        learner.new_readings, learner.n_seen, learner.n_drifts, learner.n_adaptations = f["counters"]
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"corrupt state: {exc!r}") from exc
    if learner.buffer.x.shape != (learner.cfg.buffer_size, learner.cfg.n_features):
        raise StateError("corrupt state: buffer does not match the configuration")
    return learner


def save_state(learner: OnDeviceLearner, path: str | Path) -> None:
    """Write the learner's state to ``path`` atomically (temp file, fsync, rename, fsync directory).

    Examples
    --------
    >>> import tempfile
    >>> learner = OnDeviceLearner(EdgeConfig(n_features=2, hidden=(4,)))
    >>> _ = learner.observe(np.ones((3, 2)), np.arange(3.0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_state(learner, Path(d) / "state.st")
    ...     back = load_state(Path(d) / "state.st")
    ...     sorted(p.name for p in Path(d).iterdir())
    ['state.st']
    >>> back.n_seen, back.buffer.count, back.scaler.y.mean.tolist()
    (3, 3, [1.0])
    """
    target = Path(path)
    tmp = target.with_name(target.name + TMP_SUFFIX)
    payload = encode_state(learner)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: str | Path) -> OnDeviceLearner | None:
    """The learner saved at ``path``; ``None`` if there is none yet; :class:`StateError` if corrupt.

    A temporary file left by a save that a power cut interrupted is removed:
    the state file itself still holds the previous complete state.
    """
    target = Path(path)
    with contextlib.suppress(FileNotFoundError):
        target.with_name(target.name + TMP_SUFFIX).unlink()
    try:
        payload = target.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode_state(payload)
    except StateError as exc:
        raise StateError(f"{target}: {exc}; move it away to start afresh") from exc
