"""TLS/SASL settings: validated once, and the same values reach kafka-python, Faust and aiokafka."""

from __future__ import annotations

import dataclasses
import ssl
import warnings
from pathlib import Path

import pytest

from connectors.kafka_security import aiokafka_options, faust_credentials
from connectors.settings import Settings
from pipeline.tools.brokers.certificates import LocalPki, make_local_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return make_local_pki(tmp_path_factory.mktemp("pki"))


def test_environment_spelling_is_normalised() -> None:
    env = {
        "METASTREAM_SECURITY_PROTOCOL": "sasl_plaintext",
        "METASTREAM_SASL_MECHANISM": "scram-sha-512",
        "METASTREAM_SASL_USERNAME": "alice",
        "METASTREAM_SASL_PASSWORD": "s3cret",
    }

    s = Settings.load(environ=env)

    assert (s.security_protocol, s.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert "s3cret" not in repr(s)
    assert s.kafka_python_security() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
    }


def test_sasl_without_a_mechanism_means_plain_for_every_client() -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")

    assert s.kafka_python_security()["sasl_mechanism"] == "PLAIN"
    assert aiokafka_options(s)["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"security_protocol": "TLS"},
            "security_protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u"},
            "sasl_mechanism",
        ),
        ({"security_protocol": "SASL_SSL"}, "needs sasl_username"),
        (
            {"sasl_username": "u", "sasl_password": "p"},
            "SASL credentials are set but security_protocol is PLAINTEXT",
        ),
    ],
)
def test_contradictory_settings_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**fields)


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=str(tmp_path / "nope.pem"))

    with pytest.raises(ValueError, match=r"ssl_cafile \(METASTREAM_SSL_CAFILE\): no such file"):
        s.kafka_python_security()
    with pytest.raises(ValueError, match="ssl_cafile"):
        faust_credentials(s)


def test_mutual_tls_files_reach_kafka_python_and_faust(pki: LocalPki) -> None:
    s = Settings(
        security_protocol="SSL",
        ssl_cafile=str(pki.ca_cert),
        ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key),
    )

    opts = s.kafka_python_security()
    aio = aiokafka_options(s)

    assert opts == {
        "security_protocol": "SSL",
        "ssl_cafile": str(pki.ca_cert),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
    }
    assert aio["security_protocol"] == "SSL"
    context = aio["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    # The context trusts exactly our CA (plus nothing loaded from the system, since a CA file was given).
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("organizationName", "metastream local test PKI"),), (("commonName", "metastream test CA"),))
    ]


def test_sasl_ssl_reaches_faust_with_a_tls_context(pki: LocalPki) -> None:
    s = Settings(
        security_protocol="SASL_SSL",
        ssl_cafile=str(pki.ca_cert),
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="metastream",
        sasl_password="pw",
    )

    creds = faust_credentials(s)
    aio = aiokafka_options(s)

    assert creds is not None and creds.protocol.value == "SASL_SSL"
    assert {k: v for k, v in aio.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "metastream",
        "sasl_plain_password": "pw",
    }
    assert isinstance(aio["ssl_context"], ssl.SSLContext)
    # kafka-python gets the CA file but no client certificate it was not given.
    assert s.kafka_python_security()["ssl_cafile"] == str(pki.ca_cert)
    assert "ssl_certfile" not in s.kafka_python_security()


def test_tls_files_are_ignored_without_tls(pki: LocalPki) -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", ssl_cafile=str(pki.ca_cert), sasl_username="u")

    assert "ssl_cafile" not in s.kafka_python_security()
    assert aiokafka_options(s)["ssl_context"] is None


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("METASTREAM_PARTITIONS", "many", "METASTREAM_PARTITIONS: expected int, got 'many'"),
        ("METASTREAM_PARTITIONS", "4.5", "METASTREAM_PARTITIONS: expected int, got '4.5'"),
        (
            "METASTREAM_CHECKPOINT_INTERVAL_S",
            "soon",
            "METASTREAM_CHECKPOINT_INTERVAL_S: expected float, got 'soon'",
        ),
        (
            "METASTREAM_LEARNER",
            "{inner_steps: 3",
            "METASTREAM_LEARNER: expected a JSON object, got '{inner_steps: 3'",
        ),
        ("METASTREAM_LEARNER", "[3]", "METASTREAM_LEARNER: expected dict, got '[3]'"),
    ],
)
def test_a_bad_environment_value_names_the_variable_and_the_value(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.load(environ={variable: raw, "METASTREAM_APP_ID": "fine"})

    assert str(caught.value) == message


def test_environment_values_are_typed_and_unset_ones_keep_their_defaults() -> None:
    env = {
        "METASTREAM_PARTITIONS": "12",
        "METASTREAM_CHECKPOINT_INTERVAL_S": "2.5",
        "METASTREAM_LEARNER": '{"inner_steps": 3}',
        "METASTREAM_APP_ID": "plant-7",
        "metastream_replication": "3",  # names are upper case, as documented
        "METASTREAM_NOT_A_SETTING": "x",
    }

    s = Settings.load(environ=env)

    assert (s.partitions, s.checkpoint_interval_s, s.learner, s.app_id) == (
        12,
        2.5,
        {"inner_steps": 3},
        "plant-7",
    )
    assert s.replication == Settings().replication == 1
    assert s.max_devices == 50_000


def test_the_three_batch_sizes_are_separate_settings() -> None:
    env = {
        "METASTREAM_POLL_MAX_MESSAGES": "300",
        "METASTREAM_CORE_BATCH_READINGS": "2000",
        "METASTREAM_LEARNER": '{"learn_slice": 500}',
    }

    s = Settings.load(environ=env)

    assert (s.poll_max_messages, s.core_batch_readings, s.learner_config().learn_slice) == (300, 2000, 500)
    assert Settings().learner_config().learn_slice == 1000


def test_micro_batch_still_sets_all_three_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="micro_batch .*deprecated"):
        s = Settings.load(environ={"METASTREAM_MICRO_BATCH": "250"})
    with pytest.warns(DeprecationWarning):
        kept = Settings(micro_batch=100, learner={"learn_slice": 40})

    assert (s.poll_max_messages, s.core_batch_readings, s.learner_config().learn_slice) == (250, 250, 250)
    assert (kept.core_batch_readings, kept.learner_config().learn_slice) == (100, 40)
    # Folded once: a later replace changes only what it names.
    assert dataclasses.replace(s, poll_max_messages=7).core_batch_readings == 250
    assert dataclasses.replace(s, poll_max_messages=7).poll_max_messages == 7


@pytest.mark.parametrize("name", ["poll_max_messages", "core_batch_readings", "micro_batch"])
def test_batch_sizes_below_one_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got -1"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Settings(**{name: -1})
