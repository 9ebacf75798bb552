"""The edges of metastream: data sources, Kafka clients and broker launchers."""
