"""Tooling around the runtime: the ``metastream`` CLI, demo, benchmarks, soak, local brokers, data sets.

Nothing in the runtime (:mod:`pipeline`) or the SDKs (:mod:`connectors`) imports it.
"""
