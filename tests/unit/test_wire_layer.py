"""wire/ is the bottom layer: it never imports the learning code, the runtime or a network library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("learners", "connectors", "pipeline", "faust", "kafka", "aiokafka", "river", "paho", "mode")


def test_importing_every_wire_module_loads_none_of_the_upper_layers() -> None:
    # Prepare: a fresh interpreter, so nothing else has been imported yet
    code = (
        "import json, sys\n"
        "import wire.checkpoint, wire.events, wire.messages, wire.models, wire.readings\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    # Execute
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    # Assert
    loaded = set(json.loads(done.stdout))
    assert {"wire", "metastream_edge", "torch", "safetensors"} <= loaded
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
