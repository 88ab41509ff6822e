"""Offline data sets and a small zoo of trained edge CNNs (no network needed)."""

from edgekit.data.datasets import Dataset, load_dataset, DATASETS  # noqa: F401
from edgekit.data.zoo import ZOO, load_zoo_model, zoo_names  # noqa: F401
