"""Topic administration: create the pipeline's topics, and compute key → partition.

:func:`ensure_topics` is idempotent and safe to call at every start-up of a
worker, producer or demo.  :func:`partition_for` reproduces kafka-python's
default partitioner so a gateway can address the partition a device's key
would go to without sending that key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from connectors import kafka_python_fix
from connectors.connection_check import check_connection
from connectors.settings import Settings
from metastream_edge.subscriber import partition_for as partition_for  # one partitioner, workers and devices
from wire.readings import MAX_DEAD_LETTER_BYTES

log = logging.getLogger(__name__)

COMPACT = {"cleanup.policy": "compact"}
CHECKPOINT_MAX_BYTES = 8 * 1024 * 1024
CHECKPOINT_CONFIGS = {
    **COMPACT,
    # A checkpoint is chunks of about 1 MB plus a manifest that names them (about 100 bytes
    # per chunk, so a manifest this size still covers tens of millions of devices).
    "max.message.bytes": str(CHECKPOINT_MAX_BYTES),
    # Roll segments hourly so old checkpoints become compactable (the active one never is).
    "segment.ms": str(3_600_000),
}


class TopicMismatchError(RuntimeError):
    """An existing topic whose layout differs from the settings in a way that breaks the pipeline."""


@dataclass(frozen=True)
class TopicSpec:
    """How one topic should look.

    Examples
    --------
    >>> TopicSpec("metastream.models", 4, {"cleanup.policy": "compact"}).configs
    {'cleanup.policy': 'compact'}
    >>> TopicSpec("metastream.readings", 4).configs
    {}
    """

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the deployment with its partitions and configs.

    Examples
    --------
    >>> [(t.name, t.partitions, t.configs) for t in topic_specs(Settings(partitions=3))][:3]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('metastream.readings', 3, {}),
     ('metastream.models', 3, {'cleanup.policy': 'compact'}),
     ('metastream.meta', 1, {'cleanup.policy': 'compact'})]
    """
    n = settings.partitions
    return [
        TopicSpec(settings.topic_readings, n),
        # Compacted: a device (or θ) only ever needs its latest version.
        TopicSpec(settings.topic_models, n, dict(COMPACT)),
        TopicSpec(settings.topic_meta, 1, dict(COMPACT)),
        # One partition keeps the meta agent's input totally ordered.
        TopicSpec(settings.topic_deltas, 1),
        TopicSpec(settings.topic_events, n),
        # A dead letter carries a refused record whole (base64), so it can exceed the 1 MiB default.
        TopicSpec(settings.topic_deadletter, n, {"max.message.bytes": str(MAX_DEAD_LETTER_BYTES)}),
        # Co-partitioned with the readings (checkpoint of readings partition p goes to
        # partition p); compacted, since a partition only ever needs its newest one.
        TopicSpec(settings.checkpoints_topic, n, dict(CHECKPOINT_CONFIGS)),
        # Per readings partition, the offsets the learner failed on (pipeline.suspects): newest only.
        TopicSpec(settings.suspects_topic, n, dict(COMPACT)),
    ]


def admin_client(settings: Settings, timeout_s: float = 30.0) -> KafkaAdminClient:
    """A :class:`KafkaAdminClient` for ``settings`` (TLS/SASL included); close it after use.

    Raises :class:`connectors.connection_check.BrokerConnectionError` at once
    when the broker refuses the TLS/SASL settings.
    """
    check_connection(settings, timeout_s)
    ms = int(timeout_s * 1000)
    kafka_python_fix.apply()
    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
        **settings.kafka_python_security(),
    )


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every missing topic of ``settings``; check the ones that exist.

    Raises
    ------
    TopicMismatchError
        If the existing readings topic has fewer partitions than configured:
        the workers' per-device state is partitioned like the readings, so a
        different count would silently route devices elsewhere.
    kafka.errors.KafkaError
        If a topic cannot be created for any reason other than already existing.
    """
    specs = topic_specs(settings)
    admin = admin_client(settings, timeout_s)
    try:
        result = admin.create_topics(
            {
                s.name: {"num_partitions": s.partitions, "replication_factor": settings.replication}
                | ({"configs": s.configs} if s.configs else {})
                for s in specs
            },
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
        existing = []
        for topic in result["topics"]:
            error = for_code(topic["error_code"])
            if error is TopicAlreadyExistsError:
                existing.append(topic["name"])
            elif topic["error_code"] != 0:
                raise error(f"creating topic {topic['name']!r}: {topic.get('error_message')}")
        # CreateTopics only means "accepted": wait until every partition has a leader.
        admin.wait_for_topics([s.name for s in specs], timeout_ms=int(timeout_s * 1000))
        if existing:
            _check_existing(admin, [s for s in specs if s.name in existing], settings)
    finally:
        admin.close()


def _check_existing(admin: KafkaAdminClient, specs: list[TopicSpec], settings: Settings) -> None:
    counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in specs])}
    for spec in specs:
        have = counts.get(spec.name, 0)
        if spec.name in (settings.topic_readings, settings.checkpoints_topic) and have < spec.partitions:
            raise TopicMismatchError(
                f"topic {spec.name!r} exists with {have} partitions but settings.partitions is "
                f"{spec.partitions}; add partitions (kafka-topics --alter) or lower the setting"
            )
        if have != spec.partitions:
            log.warning("topic %r has %d partitions, settings say %d", spec.name, have, spec.partitions)
    compacted = [s.name for s in specs if "compact" in s.configs.get("cleanup.policy", "")]
    if not compacted:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, ["cleanup.policy"]) for name in compacted]
    try:
        configs = admin.describe_configs(resources, config_filter="all")["topic"]
    except KafkaError as exc:
        # The embedded Tansu broker does not implement DescribeConfigs.
        log.warning("could not check cleanup.policy of %s: %s", compacted, exc)
        return
    for name in compacted:
        policy = configs.get(name, {}).get("cleanup.policy", {}).get("value", "")
        if "compact" not in policy:
            # Not fatal (the pipeline still works), but old versions then pile up until retention.
            log.warning("topic %r has cleanup.policy=%r, expected compact", name, policy)
