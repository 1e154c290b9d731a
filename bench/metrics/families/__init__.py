"""Metric families: one file per family, each declaring its columns once and registering a
:class:`bench.columns.MetricFamily` (``register_metric``). Every module here is imported on first
lookup of the ``METRIC_FAMILIES`` registry, also by the leaderboard: import torch inside
``compute``, never at module level. ``bench.evaluate.evaluate`` runs the families by ``order``.
"""
