"""Data layer: sources, partitioners, client stores and the ``FederatedData`` container."""

from fedjax_lab.data import groups, partition, sources
from fedjax_lab.data.federated import Cohort, FederatedData
from fedjax_lab.data.sources import Dataset

__all__ = ["Cohort", "Dataset", "FederatedData", "groups", "partition", "sources"]
