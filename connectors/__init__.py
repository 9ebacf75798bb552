"""The edges of metastream: data sources, Kafka clients and broker launchers."""

from connectors import kafka_python_fix

# Before any client is made: a refused password must reach the client as a refusal.
kafka_python_fix.apply()
