"""Offline data sets, the user's own data (``load_data``), and a small zoo of trained edge CNNs (no network needed)."""

from edgekit.data.datasets import Dataset, load_dataset, DATASETS  # noqa: F401
from edgekit.data.image_folder import ImageOptions  # noqa: F401
from edgekit.data.user_data import DataSplits, load_data  # noqa: F401
from edgekit.data.zoo import ZOO, load_zoo_model, zoo_names  # noqa: F401
