"""Demonstration datasets on zarr v3: episode store, sequence sampler, frozen-feature cache, import.

See ``docs/datasets.md``. Main entry points::

    from s2robot.datasets.store import EpisodeStore
    from s2robot.datasets.sampler import SequenceDataset
    from s2robot.datasets.feature_cache import cache_features, feature_hash_for
"""

from .sampler import SequenceDataset
from .store import DatasetError, EpisodeStore

__all__ = ["DatasetError", "EpisodeStore", "SequenceDataset"]
