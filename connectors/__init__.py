"""Client SDKs of metastream: sensor producer, edge subscriber, topic admin, Kafka security, signing."""
