"""Deployment settings: broker, topics, partitions, security, learner.

Read from environment variables (``METASTREAM_<FIELD>``, upper case, parsed by
pydantic-settings in :mod:`connectors.settings_env`) and/or
a JSON file; explicit keyword arguments win, then the file, then the
environment, then the defaults here.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from connectors.kafka_security import kafka_python_options
from connectors.settings_env import ENV_PREFIX, read_environment
from learners.config import LearnerConfig

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""Values of ``security_protocol`` (Kafka's names; lower case is accepted)."""

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""Values of ``sasl_mechanism``: the user/password mechanisms every client here supports."""


@dataclass(frozen=True)
class Settings:
    """Everything a worker, producer or edge client needs to find and trust each other.

    Examples
    --------
    >>> env = {"METASTREAM_BROKER": "kafka://10.0.0.5:9092", "METASTREAM_PARTITIONS": "12"}
    >>> s = Settings.load(environ=env)
    >>> s.bootstrap, s.partitions, s.topic_readings
    ('10.0.0.5:9092', 12, 'metastream.readings')
    >>> Settings.load(environ={"METASTREAM_PARTITIONS": "many"})
    Traceback (most recent call last):
    ...
    ValueError: METASTREAM_PARTITIONS: expected int, got 'many'
    """

    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "metastream"
    partitions: int = 4
    replication: int = 1
    topic_readings: str = "metastream.readings"
    topic_models: str = "metastream.models"
    topic_meta: str = "metastream.meta"
    topic_deltas: str = "metastream.deltas"
    topic_events: str = "metastream.events"
    topic_deadletter: str = "metastream.deadletter"
    topic_checkpoints: str = ""
    """Compacted topic of per-partition worker checkpoints; empty: ``<app_id>.checkpoints``."""
    checkpoint_interval_s: float = 5.0
    """How often a worker checkpoints the partitions whose state changed (also on revocation).

    Offsets are committed only up to the newest checkpoint, so after a crash
    at most this much of the stream is read (and its outputs sent) again.
    """
    max_devices: int = 50_000
    """Most devices a worker keeps in memory; beyond, the least recently seen idle ones are evicted.

    An evicted device's state is saved (local store, and in the checkpoints)
    and restored exactly on its next reading.  A resident device costs about
    11-17 KB of memory with the default learner (more as its detector window
    grows), so the default bounds the learner state near 0.5-0.8 GB; a device
    that is only known (evicted) costs under 1 KB.
    """
    session_timeout_s: float = 60.0
    """Consumer-group session timeout: how long a crashed worker's partitions wait for a new owner."""
    n_features: int = 8
    task: str = "regression"
    n_classes: int = 2
    max_abs_value: float = 1e9
    """Readings with a feature or target beyond this magnitude are dead-lettered (``out_of_range``)."""
    poll_max_messages: int = 1000
    """Most messages a worker takes from the readings topic at once (acked together)."""
    core_batch_readings: int = 1000
    """Readings per call into the learner core (gateway messages pack many readings)."""
    micro_batch: int = 0
    """Deprecated: if set (not 0), sets ``poll_max_messages``, ``core_batch_readings``
    and ``learner["learn_slice"]``."""
    batch_window_s: float = 0.05
    signing_key: str = ""
    """PEM Ed25519 private key (worker); empty: an ephemeral key (demo/tests only)."""
    trusted_keys: str = ""
    """Comma-separated PEM public keys an edge client trusts."""
    device_keys: str = ""
    """Directory of federated devices' PEM Ed25519 public keys, one ``<device_id>.pem`` each.

    The meta agent applies a contribution from ``edge:<device_id>`` only if
    that device's key signed it; empty: every federated contribution is refused.
    """
    dp_epsilon_budget: float = 0.0
    """Privacy budget ε of each federated device; 0: no budget is kept or enforced.

    When positive, the meta agent counts each device's contributions and refuses
    the one that would spend more than this ε at ``dp_delta`` (a
    ``privacy_budget_exhausted`` event names the device once).
    """
    dp_noise_multiplier: float = 0.0
    """Noise multiplier z of the Gaussian noise federated devices add (local DP); needed with a budget."""
    dp_delta: float = 1e-5
    """δ at which ε is accounted."""
    security_protocol: str = "PLAINTEXT"
    """``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``, for every Kafka client."""
    ssl_cafile: str = ""
    """PEM file of the CA(s) that signed the broker's certificate; empty: the system's CAs."""
    ssl_certfile: str = ""
    """PEM client certificate (mutual TLS), possibly followed by its key."""
    ssl_keyfile: str = ""
    """PEM private key of ``ssl_certfile`` when it is a separate file."""
    sasl_mechanism: str = ""
    """``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``; empty with a SASL protocol means ``PLAIN``."""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    web_host: str = "127.0.0.1"
    """Address the worker's web server (``--web-port``) binds to; ``0.0.0.0`` for every interface."""
    web_token: str = field(default="", repr=False)
    """Bearer token for ``/dashboard`` and ``/fleet.json``.

    Empty: the first line of ``web_token_file``, else a random token the worker logs at start.
    """
    web_token_file: str = ""
    """File whose first line is the dashboard token (e.g. a mounted secret)."""
    metrics_token: str = field(default="", repr=False)
    """Bearer token for ``/metrics``; empty: ``/metrics`` is open on ``web_host``."""
    learner: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`LearnerConfig` fields (e.g. ``{"inner_steps": 10}``)."""
    mqtt_broker: str = "mqtt://127.0.0.1:1883"
    """MQTT broker of the bridge and of MQTT devices: ``mqtt://host:port`` or ``mqtts://`` (TLS)."""
    mqtt_username: str = ""
    """MQTT user name; empty: connect anonymously."""
    mqtt_password: str = field(default="", repr=False)
    mqtt_cafile: str = ""
    """PEM CA of the MQTT broker's certificate with ``mqtts://``; empty: the system's CAs."""
    mqtt_topic_prefix: str = "metastream"
    """Devices publish on ``<prefix>/<device>/readings`` and get models on ``<prefix>/<device>/model``."""
    mqtt_client_id: str = ""
    """The bridge's MQTT client id (its persistent session); empty: ``<app_id>-mqtt-bridge``."""

    def __post_init__(self) -> None:
        # Normalised once here, so Faust, aiokafka and kafka-python all get the same spelling.
        protocol = self.security_protocol.strip().upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}; "
                f"got {self.security_protocol!r}"
            )
        object.__setattr__(self, "security_protocol", protocol)
        mechanism = self.sasl_mechanism.strip().upper()
        if protocol.startswith("SASL"):
            mechanism = mechanism or "PLAIN"
            if mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}; got {self.sasl_mechanism!r}"
                )
            if not self.sasl_username:
                raise ValueError(f"security_protocol {protocol} needs sasl_username (and sasl_password)")
        elif mechanism or self.sasl_username or self.sasl_password:
            # Credentials that would silently not be sent are a misconfiguration, not a default.
            raise ValueError(f"SASL credentials are set but security_protocol is {protocol}; use SASL_SSL")
        object.__setattr__(self, "sasl_mechanism", mechanism)
        if self.max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {self.max_devices}")
        if self.dp_epsilon_budget < 0 or self.dp_noise_multiplier < 0 or not 0 < self.dp_delta < 1:
            raise ValueError("dp_epsilon_budget and dp_noise_multiplier must be >= 0, dp_delta in (0, 1)")
        if self.dp_epsilon_budget > 0 and self.dp_noise_multiplier == 0:
            raise ValueError("dp_epsilon_budget needs dp_noise_multiplier: the noise the devices add")
        for name in ("poll_max_messages", "core_batch_readings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch:
            self._fold_micro_batch(self.micro_batch)

    def _fold_micro_batch(self, size: int) -> None:
        """``micro_batch`` meant three sizes at once; it still sets each of them, with a warning."""
        warnings.warn(
            "micro_batch (METASTREAM_MICRO_BATCH) is deprecated: set poll_max_messages, "
            'core_batch_readings and learner["learn_slice"] instead',
            DeprecationWarning,
            stacklevel=4,
        )
        if size < 1:
            raise ValueError(f"micro_batch must be >= 1, got {size}")
        object.__setattr__(self, "poll_max_messages", size)
        object.__setattr__(self, "core_batch_readings", size)
        object.__setattr__(self, "learner", {"learn_slice": size, **self.learner})
        # Folded once: ``dataclasses.replace`` of these settings must not undo a later change.
        object.__setattr__(self, "micro_batch", 0)

    @property
    def uses_tls(self) -> bool:
        """Whether clients talk TLS to the broker (``SSL`` or ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    def tls_files(self) -> dict[str, str]:
        """The TLS files that are set, by setting name, after checking that each exists.

        Raises
        ------
        ValueError
            If a named file does not exist (rather than a TLS error much later).
        """
        names = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        files = {k: getattr(self, k) for k in names if getattr(self, k)}
        for key, path in files.items():
            if not Path(path).is_file():
                raise ValueError(f"{key} ({ENV_PREFIX}{key.upper()}): no such file {path!r}")
        if "ssl_keyfile" in files and "ssl_certfile" not in files:
            raise ValueError("ssl_keyfile is set without ssl_certfile")
        return files

    @property
    def checkpoints_topic(self) -> str:
        """Name of the checkpoint topic (one per consumer group, so per ``app_id``).

        Examples
        --------
        >>> Settings(app_id="plant-7").checkpoints_topic, Settings(topic_checkpoints="ck").checkpoints_topic
        ('plant-7.checkpoints', 'ck')
        """
        return self.topic_checkpoints or f"{self.app_id}.checkpoints"

    @property
    def suspects_topic(self) -> str:
        """Compacted topic of the readings the learner failed on (see :mod:`pipeline.suspects`).

        One per consumer group, next to the checkpoint topic.

        Examples
        --------
        >>> Settings(app_id="plant-7").suspects_topic, Settings(topic_checkpoints="ck").suspects_topic
        ('plant-7.checkpoints.suspects', 'ck.suspects')
        """
        return f"{self.checkpoints_topic}.suspects"

    @property
    def bootstrap(self) -> str:
        """``host:port[,host:port]`` without the ``kafka://`` scheme."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker.split(","))

    def learner_config(self) -> LearnerConfig:
        """The learner settings for this deployment."""
        return LearnerConfig(
            n_features=self.n_features,
            task=self.task,  # type: ignore[arg-type]  # validated by LearnerConfig
            n_classes=self.n_classes,
            **self.learner,
        )

    def kafka_python_security(self) -> dict[str, Any]:
        """TLS/SASL options in kafka-python's spelling (``KafkaProducer(**opts)`` etc.).

        Spelled by :func:`connectors.kafka_security.kafka_python_options`, next to
        the aiokafka and Faust spellings of the same fields.

        Examples
        --------
        >>> Settings().kafka_python_security()
        {'security_protocol': 'PLAINTEXT'}
        >>> opts = Settings(security_protocol="sasl_plaintext", sasl_mechanism="scram-sha-256",
        ...                 sasl_username="u", sasl_password="p").kafka_python_security()
        >>> opts == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
        ...          "sasl_plain_username": "u", "sasl_plain_password": "p"}
        True
        """
        return kafka_python_options(self)

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: dict[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults ← environment ← JSON file ← ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = read_environment(cls, env)
        if path is not None:
            data = json.loads(Path(path).read_text())
            unknown = set(data) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
            values.update(data)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)
