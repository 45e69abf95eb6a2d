"""The backbones a run may choose, named once: the configuration's type, the command line's
choices and the builders' and weights' tables all come from here (no torch import)."""

from typing import Literal, get_args

Backbone = Literal["resnet18", "resnet34", "resnet50"]
BACKBONES: tuple[str, ...] = get_args(Backbone)
