"""Training data: scans as ``Series``, 3-slice stack datasets, data sources by spec, patient splits, sampling.

Example:
    >>> from ichdemo.data import open_source, SliceStackDataset
    >>> source = open_source("phantom:8")
    >>> data = SliceStackDataset(source.series, size=128)
    >>> item = data[0]  # {"image": (3, 128, 128), "labels": (5,), "mask": (128, 128), "has_mask", "index"}
"""

from ichdemo.data.sampling import WeightedEpochSampler, pos_weight, sample_weights
from ichdemo.data.series import MASK_ANY, MASK_NONE, ArraySeries, Series, SliceStackDataset
from ichdemo.data.sources import DataSource, open_source, parse_spec
from ichdemo.data.splits import Split, require_classes, split_patients

__all__ = [
    "MASK_ANY",
    "MASK_NONE",
    "ArraySeries",
    "DataSource",
    "Series",
    "SliceStackDataset",
    "Split",
    "WeightedEpochSampler",
    "open_source",
    "parse_spec",
    "pos_weight",
    "require_classes",
    "sample_weights",
    "split_patients",
]
