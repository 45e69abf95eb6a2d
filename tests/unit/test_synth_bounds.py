"""`synthetic.generate` refuses out-of-range arguments itself, naming each, before it paints
or writes anything (the command line checks the same bounds while parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo_core.data.synthetic import BOUNDS, generate
from pneumo_core.errors import InputError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 4097}, "image_size must be an integer in 64..4096, got 4097"),
        ({"seed": -1}, "seed must be an integer in 0..4294967295, got -1"),
        ({"seed": 1.5}, "seed must be an integer"),
        # image_size 32 is refused too: n_train is checked first, so the message names it
        ({"n_train": 100_001, "image_size": 32}, "n_train must be an integer in 1..100000"),
        ({"n_test": 100_001, "image_size": 32}, "n_test must be an integer in 0..100000"),
    ],
)
def test_out_of_range_arguments_are_refused_by_name(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        generate(tmp_path / "out", **{"n_train": 1, "n_test": 0, **kwargs})
    assert not (tmp_path / "out").exists()


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    lo_size, _ = BOUNDS["image_size"]
    _, hi_seed = BOUNDS["seed"]
    generate(tmp_path / "out", n_train=1, n_test=0, image_size=lo_size, seed=hi_seed)
    assert (tmp_path / "out" / "stage_2_train_labels.csv").exists()
