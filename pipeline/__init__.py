"""The streaming runtime of metastream: Faust app, worker core, checkpoints, metrics, dashboard.

The tooling around it (CLI, demo, benchmarks, local brokers) is :mod:`pipeline.tools`.

Importing this package does not import Faust; only the worker does.
"""
