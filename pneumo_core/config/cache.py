"""`CacheSpec`: what a prepared cache is made for (data set, image size, folds, seed).

The run configuration starts with these fields and `prepare` checks its arguments with the
same model, so their defaults and ranges are written once: a cache that prepare accepts is
one a run can use, and the reverse.
"""

from __future__ import annotations

from pydantic import Field

from pneumo_core import DEFAULT_DATASET
from pneumo_core.config.checked import CheckedModel

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a dataset name: one safe store key part


class CacheSpec(CheckedModel):
    """The data set, the square image size of its decoded cache, and how its patients are
    split into folds (stratified, reproducible from the seed)."""

    dataset: str = Field(DEFAULT_DATASET, pattern=NAME_PATTERN)
    image_size: int = Field(512, ge=32, le=4096)
    n_folds: int = Field(4, ge=2, le=50)
    seed: int = Field(42, ge=0, le=2**32 - 1)

    def cache_spec(self) -> CacheSpec:
        """Just these fields (of a run configuration, say), for `prepare`."""
        return CacheSpec(**{name: getattr(self, name) for name in CacheSpec.model_fields})
