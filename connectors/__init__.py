"""Client SDKs of metastream: sensor producer, edge subscriber, topic admin, wire formats, signing."""

from connectors import kafka_python_fix

# Before any client is made: a refused password must reach the client as a refusal.
kafka_python_fix.apply()
