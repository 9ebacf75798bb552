"""deploy/k8s: schema-checked (Kubernetes, Strimzi and KEDA schemas) and cross-checked.

Nothing is applied to a cluster: the manifests are rendered with kustomize and checked statically.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from connectors.admin import topic_specs
from connectors.settings import Settings
from pipeline.tools.brokers import KAFKA_VERSION
from tests.deploy.manifests import (
    DEPLOY,
    FETCHED_VERSIONS,
    K8S,
    KUBERNETES_VERSION,
    NOT_SETTINGS,
    by_kind,
    crd_validator,
    keda_kafka_metadata_keys,
    load_yaml_docs,
    one,
    parse_cli,
    schema_errors,
)

STRIMZI_VERSION = FETCHED_VERSIONS["STRIMZI_VERSION"]
KEDA_VERSION = FETCHED_VERSIONS["KEDA_VERSION"]
CUSTOM = {
    ("kafka.strimzi.io/v1beta2", "Kafka"): f"strimzi-{STRIMZI_VERSION}/kafka.yaml",
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): f"strimzi-{STRIMZI_VERSION}/kafkanodepool.yaml",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): f"strimzi-{STRIMZI_VERSION}/kafkatopic.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): f"keda-{KEDA_VERSION}/keda.sh_scaledobjects.yaml",
}


def settings_of(docs: list[dict[str, Any]]) -> Settings:
    """The worker settings the ConfigMap gives."""
    return Settings.load(environ=dict(one(docs, "ConfigMap")["data"]))


def validate_all(docs: list[dict[str, Any]], validators: Path) -> list[str]:
    """Schema errors of every document: built-in kinds strictly, custom resources by their CRD."""
    errors = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM:
            version = doc["apiVersion"].split("/")[1]
            errors += [
                f"{name}: {e}" for e in schema_errors(crd_validator(validators / CUSTOM[key], version), doc)
            ]
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{name}: {exc.message}")
    return errors


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_rendered_manifest_matches_its_schema(k8s_docs: list[dict[str, Any]], validators: Path) -> None:
    # Prepare
    kinds = sorted(d["kind"] for d in k8s_docs)
    # Execute
    errors = validate_all(k8s_docs, validators)
    # Assert
    assert errors == []
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "Deployment", "Kafka", "KafkaNodePool", "ScaledObject"]
        + ["KafkaTopic"] * len(topic_specs(Settings()))  # one per topic the workers use
    )


@pytest.mark.slow
def test_secret_example_matches_the_schema(validators: Path) -> None:
    # Prepare
    docs = load_yaml_docs(K8S / "secret.example.yaml")
    # Execute
    errors = validate_all(docs, validators)
    # Assert
    assert errors == [] and [d["kind"] for d in docs] == ["Secret"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "path", "bad_value", "expected"),
    [
        ("KafkaTopic", ("spec", "partition"), 12, "Additional properties are not allowed ('partition'"),
        ("KafkaNodePool", ("spec", "roles"), ["broker", "zookeeper"], "'zookeeper' is not one of"),
        ("ScaledObject", ("spec", "minReplicaCount"), "one", "'one' is not of type 'integer'"),
        ("Deployment", ("spec", "template", "spec", "containers", 0, "envFromm"), [], "envFromm"),
    ],
)
def test_schema_check_rejects_a_broken_manifest(
    k8s_docs: list[dict[str, Any]],
    validators: Path,
    kind: str,
    path: tuple[Any, ...],
    bad_value: Any,
    expected: str,
) -> None:
    # Prepare: one misspelt field or wrong value in an otherwise valid document
    doc = by_kind(k8s_docs, kind)[0]
    broken = copy.deepcopy(doc)
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = bad_value
    # Execute
    errors = validate_all([broken], validators)
    # Assert
    assert len(errors) == 1 and expected in errors[0], errors


# -- cross-checks ---------------------------------------------------------------------------------


def test_configmap_holds_only_settings_the_code_reads(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    data = one(k8s_docs, "ConfigMap")["data"]
    fields = {f"METASTREAM_{name.upper()}" for name in Settings.__dataclass_fields__}
    # Execute
    unknown = set(data) - fields - NOT_SETTINGS
    settings = settings_of(k8s_docs)
    # Assert
    assert unknown == set()
    assert (settings.partitions, settings.replication, settings.app_id) == (12, 3, "metastream")


def test_broker_address_is_the_strimzi_bootstrap_service(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    kafka = one(k8s_docs, "Kafka")
    listener = next(li for li in kafka["spec"]["kafka"]["listeners"] if li["type"] == "internal")
    # Execute
    expected = f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    # Assert
    assert settings_of(k8s_docs).bootstrap == expected == "metastream-kafka-bootstrap:9092"
    assert listener["tls"] is False and settings_of(k8s_docs).security_protocol == "PLAINTEXT"


def test_kafka_runs_kraft_with_the_project_kafka_version(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    kafka = one(k8s_docs, "Kafka")
    pools = by_kind(k8s_docs, "KafkaNodePool")
    settings = settings_of(k8s_docs)
    # Execute
    roles = {role for pool in pools for role in pool["spec"]["roles"]}
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    config = kafka["spec"]["kafka"]["config"]
    # Assert
    assert kafka["spec"]["kafka"]["version"] == KAFKA_VERSION
    assert "zookeeper" not in kafka["spec"] and roles == {"controller", "broker"}
    assert {p["metadata"]["labels"]["strimzi.io/cluster"] for p in pools} == {kafka["metadata"]["name"]}
    assert settings.replication <= brokers and config["min.insync.replicas"] < settings.replication
    assert config["auto.create.topics.enable"] is False


def test_topics_are_laid_out_as_topic_specs_says(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    settings = settings_of(k8s_docs)
    kafka_name = one(k8s_docs, "Kafka")["metadata"]["name"]
    # Execute
    declared = {
        t["spec"]["topicName"]: (t["spec"]["partitions"], t["spec"].get("config", {}), t["spec"]["replicas"])
        for t in by_kind(k8s_docs, "KafkaTopic")
    }
    clusters = {t["metadata"]["labels"]["strimzi.io/cluster"] for t in by_kind(k8s_docs, "KafkaTopic")}
    # Assert
    assert declared == {
        s.name: (s.partitions, s.configs, settings.replication) for s in topic_specs(settings)
    }
    assert clusters == {kafka_name}


def test_worker_deployment_refers_to_config_and_secret_that_exist(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    pod = one(k8s_docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secret = load_yaml_docs(K8S / "secret.example.yaml")[0]
    configmap = one(k8s_docs, "ConfigMap")
    env = {e["name"]: e for e in container["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Execute
    config_refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    key_path = Path(env["METASTREAM_SIGNING_KEY"]["value"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == key_path.parent)
    key_volume = volumes[mount["name"]]["secret"]
    item = next(i for i in key_volume["items"] if i["path"] == key_path.name)
    # Assert
    assert config_refs == [configmap["metadata"]["name"]]
    assert all("valueFrom" not in e for e in env.values())
    assert key_volume["secretName"] == secret["metadata"]["name"] and item["key"] in secret["stringData"]
    assert mount["readOnly"] is True and pod["securityContext"]["fsGroup"] == 10001


def test_worker_command_is_a_valid_worker_command_line(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    (container,) = one(k8s_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # Execute
    args = parse_cli(container["args"])
    # Assert
    assert args.command == "worker"
    assert args.web_port == ports[container["livenessProbe"]["httpGet"]["port"]] == 6066
    assert args.signing_key is None  # from METASTREAM_SIGNING_KEY, so the Secret is the only source


def test_one_worker_per_core_with_one_torch_thread(k8s_docs: list[dict[str, Any]]) -> None:
    # Prepare
    (container,) = one(k8s_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    # Execute
    resources = container["resources"]
    # Assert
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "1"
    assert one(k8s_docs, "ConfigMap")["data"]["METASTREAM_TORCH_THREADS"] == "1"


@pytest.mark.slow
def test_keda_scales_the_worker_on_the_readings_lag_of_its_consumer_group(
    k8s_docs: list[dict[str, Any]], validators: Path
) -> None:
    # Prepare
    scaled = one(k8s_docs, "ScaledObject")
    settings = settings_of(k8s_docs)
    (trigger,) = scaled["spec"]["triggers"]
    known_keys = keda_kafka_metadata_keys(validators / f"keda-{KEDA_VERSION}" / "kafka_scaler.go")
    # Execute
    meta = trigger["metadata"]
    # Assert
    assert trigger["type"] == "kafka" and set(meta) <= known_keys, set(meta) - known_keys
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(k8s_docs, "Deployment")["metadata"]["name"]
    assert meta["bootstrapServers"] == settings.bootstrap
    assert meta["consumerGroup"] == settings.app_id
    assert meta["topic"] == settings.topic_readings
    # Partitions bound the useful workers; at least one keeps the meta aggregator running.
    assert scaled["spec"]["maxReplicaCount"] == settings.partitions
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert int(meta["lagThreshold"]) > 0


def test_keda_offset_reset_policy_matches_the_workers_consumer() -> None:
    # Prepare
    from connectors.signing import Signer
    from pipeline.app import create_app

    scaled = load_yaml_docs(K8S / "worker-scaledobject.yaml")[0]
    # Execute
    app = create_app(Settings(), Signer.generate())
    # Assert
    assert (
        scaled["spec"]["triggers"][0]["metadata"]["offsetResetPolicy"] == app.conf.consumer_auto_offset_reset
    )


def test_documented_commands_create_the_secret_the_deployment_mounts() -> None:
    # Prepare: deploy/README.md and the example's own comment both show the command
    secret = load_yaml_docs(K8S / "secret.example.yaml")[0]
    texts = {
        "README.md": (DEPLOY / "README.md").read_text(),
        "secret.example.yaml": re.sub(r"^# ?", "", (K8S / "secret.example.yaml").read_text(), flags=re.M),
    }
    # Execute: one shell command each, backslash continuations joined
    commands = {
        name: [
            shlex.split(m.replace("\\\n", " "))
            for m in re.findall(r"kubectl (?:-n \S+ )?create secret generic (?:[^\n\\]|\\\n)*", text)
        ]
        for name, text in texts.items()
    }
    # Assert
    assert {name: len(found) for name, found in commands.items()} == dict.fromkeys(texts, 1)
    for (argv,) in commands.values():
        assert argv[argv.index("generic") + 1] == secret["metadata"]["name"]
        (from_file,) = [a for a in argv if a.startswith("--from-file=")]
        assert from_file.split("=")[1] in secret["stringData"]


@pytest.mark.slow
def test_strimzi_kafka_config_names_real_broker_settings(
    k8s_docs: list[dict[str, Any]], kafka_configs: set[str]
) -> None:
    # Prepare
    config = one(k8s_docs, "Kafka")["spec"]["kafka"]["config"]
    topic_configs = {k for t in by_kind(k8s_docs, "KafkaTopic") for k in t["spec"].get("config", {})}
    # Execute
    unknown = set(config) - kafka_configs
    # Assert: topic-level names are the topic spellings of broker defaults
    broker_default = {
        "cleanup.policy": "log.cleanup.policy",
        "max.message.bytes": "message.max.bytes",
        "segment.ms": "log.roll.ms",
    }
    assert unknown == set()
    assert topic_configs == set(broker_default)
    assert set(broker_default.values()) <= kafka_configs
