"""A fix for kafka-python 3.0's transport: the last response before the broker closes is lost.

A broker that refuses a SASL password sends the ``SaslAuthenticate`` error
response and closes the connection right after it (after its
``connection.failed.authentication.delay.ms``).  When both arrive in one read,
kafka-python 3.0.12 drops the response and reports only ``socket
disconnected``; in our runs that happened on most attempts, so a wrong
password could look like an unreachable broker for a whole bootstrap timeout.

:func:`apply` replaces the transport's read loop with one that hands the
bytes to the protocol first and closes the connection one event-loop turn
later, once the protocol has acted on them, so the client fails with the
broker's own reason (``SaslAuthenticationFailedError``).  Every place that
makes a kafka-python client calls :func:`apply` first (it is idempotent);
importing this module changes nothing.  Upstream's read loop
(after 3.0.12) also delivers the bytes first, but closes at once.
"""

from __future__ import annotations

import time
from typing import Any

import kafka
from kafka.errors import KafkaProtocolError
from kafka.net.transport import KafkaTCPTransport


async def _read_from_sock(self: Any) -> None:
    # kafka-python 3.0.12's KafkaTCPTransport._read_from_sock, changed where marked.
    while self._read and not self._closed:
        await self._net.wait_read(self._sock)
        recvd_data, err = self._sock_recv()
        if recvd_data:  # changed: deliver what came with the close, too
            self.last_read = time.monotonic()
            if self._protocol and self._protocol._sensors:
                self._protocol._sensors.bytes_received.record(len(recvd_data))
            try:
                self._protocol.data_received(recvd_data)
            except KafkaProtocolError as e:
                return self.abort(error=e)
        if err:
            if recvd_data:  # changed: let the protocol act on the response before the close
                await self._net.sleep(0)
            return self.abort(error=err)


def apply() -> bool:
    """Install the fixed read loop on kafka-python 3.0.x; return whether it is installed.

    Calling it again changes nothing.

    Examples
    --------
    >>> apply(), apply()
    (True, True)
    >>> KafkaTCPTransport._read_from_sock is _read_from_sock
    True
    """
    if not kafka.__version__.startswith("3.0."):
        return False
    if KafkaTCPTransport._read_from_sock is not _read_from_sock:
        KafkaTCPTransport._read_from_sock = _read_from_sock
    return True
