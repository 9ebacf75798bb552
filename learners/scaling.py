"""Running standardisation of features and targets (Welford, batched).

One implementation for workers and devices: :mod:`metastream_edge.scaling`.
"""

from metastream_edge.scaling import RunningScaler, TaskScaler

__all__ = ["RunningScaler", "TaskScaler"]
