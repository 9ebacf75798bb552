"""Before ``worker``, ``edge`` or ``produce`` start: is there a broker at all?

Without a broker kafka-python waits 30 s and then fails with a long
traceback.  :func:`check_broker` turns that into one line within seconds
that names where the address came from (``--broker``, the settings file,
``METASTREAM_BROKER`` or the default) and, when ``metastream broker start``
runs a local broker, the address to use instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from connectors.connection_check import BrokerUnreachableError, require_broker
from connectors.settings import ENV_PREFIX, Settings

BROKER_ENV = ENV_PREFIX + "BROKER"


def broker_source(broker_flag: str | None, settings_file: str | None, environ: Mapping[str, str]) -> str:
    """Which setting chose the broker address, in the words an operator would change.

    Examples
    --------
    >>> broker_source("kafka://h:1", None, {})
    '--broker'
    >>> broker_source(None, None, {"METASTREAM_BROKER": "kafka://h:1"})
    'METASTREAM_BROKER'
    >>> broker_source(None, None, {})
    'the default (neither --broker nor METASTREAM_BROKER is set)'
    """
    if broker_flag:
        return "--broker"
    if settings_file is not None and "broker" in json.loads(Path(settings_file).read_text()):
        return f'"broker" in {settings_file}'
    if environ.get(BROKER_ENV):
        return BROKER_ENV
    return f"the default (neither --broker nor {BROKER_ENV} is set)"


def unreachable_message(bootstrap: str, source: str, local: str | None) -> str:
    """The one-line error for a broker nobody answers at.

    Examples
    --------
    >>> unreachable_message("127.0.0.1:9092", "METASTREAM_BROKER", "127.0.0.1:40001")
    'no Kafka broker answers at 127.0.0.1:9092 (from METASTREAM_BROKER); `metastream broker status` \
knows one at kafka://127.0.0.1:40001: pass --broker kafka://127.0.0.1:40001 or set METASTREAM_BROKER to it'
    """
    text = f"no Kafka broker answers at {bootstrap} (from {source})"
    if local is not None and local != bootstrap:
        return (
            f"{text}; `metastream broker status` knows one at kafka://{local}: "
            f"pass --broker kafka://{local} or set {BROKER_ENV} to it"
        )
    return (
        f"{text}; set the broker setting ({BROKER_ENV}, --broker or a settings file), "
        "or start a local one with `metastream broker start`"
    )


def check_broker(
    settings: Settings,
    broker_flag: str | None,
    settings_file: str | None,
    timeout_s: float = 5.0,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`BrokerUnreachableError` with :func:`unreachable_message` if no broker answers."""
    try:
        require_broker(settings, timeout_s)
    except BrokerUnreachableError:
        from pipeline.tools.broker_cli import running_broker

        local = running_broker()
        source = broker_source(broker_flag, settings_file, os.environ if environ is None else environ)
        message = unreachable_message(settings.bootstrap, source, local["bootstrap"] if local else None)
        raise BrokerUnreachableError(message) from None
