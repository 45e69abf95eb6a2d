"""`AugmentConfig`: the augmentation settings, apart from the code that applies them
(pneumo_core/augment.py, which needs OpenCV and imgaug), so that reading or checking a run
configuration stays fast: `pneumo run` checks its configuration before anything heavy loads.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, model_validator

from pneumo_core.config.checked import CheckedModel


class AugmentConfig(CheckedModel):
    """Ranges and probabilities of every augmentation; the defaults are the seed recipe's.

    Ranges are symmetric half-widths: a scale of 0.15 draws a zoom in [0.85, 1.15], a shift of
    0.05 draws up to 5 % of the image size along each axis, a gamma of 0.25 draws gamma in
    [0.75, 1.25]. Boxes left narrower or lower than `min_box_size` cache pixels, or keeping
    less than `min_visible` of their transformed area inside the image, are dropped.
    """

    section: ClassVar[str] = "augment."

    enabled: bool = True
    hflip_p: float = Field(0.5, ge=0, le=1)
    scale: float = Field(0.15, ge=0, lt=1)
    rotation_deg: float = Field(6.0, ge=0, le=180)
    shear_deg: float = Field(4.0, ge=0, lt=90)
    shift: float = Field(0.05, ge=0, le=1)
    gamma: float = Field(0.25, ge=0, lt=1)
    blur_sigma: float = Field(2.0, ge=0)
    blur_p: float = Field(0.5, ge=0, le=1)
    noise_std: float = Field(0.04 * 255, ge=0, le=255)
    noise_p: float = Field(0.5, ge=0, le=1)
    salt_pepper: float = Field(0.01, ge=0, le=1)
    salt_pepper_size_min: float = Field(0.10, gt=0, le=1)
    salt_pepper_size_max: float = Field(0.20, gt=0, le=1)
    salt_pepper_p: float = Field(0.1, ge=0, le=1)
    min_box_size: float = Field(4.0, ge=0)
    min_visible: float = Field(0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _salt_pepper_sizes_ordered(self) -> Self:
        if self.salt_pepper_size_min > self.salt_pepper_size_max:
            raise ValueError(
                f"salt_pepper_size_min={self.salt_pepper_size_min} must not exceed "
                f"salt_pepper_size_max={self.salt_pepper_size_max}"
            )
        return self

    @classmethod
    def seed_recipe(cls) -> AugmentConfig:
        """The seed recipe's heavy augmentation, kept so results stay comparable."""
        return cls()

    @classmethod
    def flip_only(cls) -> AugmentConfig:
        """Random horizontal flips and nothing else: the naive baseline."""
        return cls(
            scale=0.0,
            rotation_deg=0.0,
            shear_deg=0.0,
            shift=0.0,
            gamma=0.0,
            blur_p=0.0,
            noise_p=0.0,
            salt_pepper_p=0.0,
        )
