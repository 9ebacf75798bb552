"""The kafka-python patch is an explicit call, not a side effect of importing ``connectors``."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import connectors.settings, wire.readings
from kafka.net.transport import KafkaTCPTransport
before = KafkaTCPTransport._read_from_sock.__module__
from connectors.admin import admin_client  # a module that makes clients: importing it changes nothing either
after_import = KafkaTCPTransport._read_from_sock.__module__
from connectors import kafka_python_fix
installed = kafka_python_fix.apply(), kafka_python_fix.apply()
print(before, after_import, KafkaTCPTransport._read_from_sock.__module__, installed)
"""


def test_importing_connectors_leaves_kafka_python_alone_until_apply_is_called() -> None:
    # Execute: a fresh interpreter, so no earlier test has applied the patch
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout

    # Assert
    assert out.split(maxsplit=3) == [
        "kafka.net.transport",
        "kafka.net.transport",
        "connectors.kafka_python_fix",
        "(True, True)\n",
    ]
