"""The stream-processing side of metastream: CLI, Faust app and benchmarks.

Importing this package does not import Faust; only the worker does.
"""
