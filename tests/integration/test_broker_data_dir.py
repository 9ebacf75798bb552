"""An Apache Kafka broker started again on its data directory has its port and topics back."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import NewTopic

from connectors.admin import admin_client
from connectors.settings import Settings
from pipeline.tools.brokers import ApacheKafkaBroker, start_broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def topics(bootstrap: str) -> set[str]:
    admin = admin_client(Settings(broker=f"kafka://{bootstrap}"))
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_a_second_broker_on_the_same_data_dir_keeps_port_and_topics(tmp_path: Path) -> None:
    # Prepare: a broker on a data directory, with one topic
    data = tmp_path / "kafka-data"
    first = ApacheKafkaBroker(work_dir=data).start()
    try:
        admin = admin_client(Settings(broker=f"kafka://{first.bootstrap}"))
        admin.create_topics([NewTopic("kept", 3, 1)])
        admin.close()
        port = first.port
    finally:
        first.close()

    # Execute: another broker object (as after `broker stop` / `broker start`) on the same directory
    with ApacheKafkaBroker(work_dir=data) as second:
        # Assert
        assert second.port == port
        assert "kept" in topics(second.bootstrap)
    assert (data / "data").is_dir()  # close() leaves a given directory alone


def test_the_embedded_broker_refuses_a_data_dir(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="embedded broker keeps nothing"):
        start_broker("embedded", data_dir=tmp_path)
