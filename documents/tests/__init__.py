import pytest

from config.testing.datasets import DATASETS

needs_datasets = pytest.mark.skipif(
    not DATASETS.is_dir(), reason=f"shared datasets not found at {DATASETS} (DOCENT_DATASETS sets another place)"
)
