"""The JSON records a run stores, as typed models: a fold's result (done.json), the evaluation
(evaluation.json) and the run record (run.json).

Each record carries `format_version`. A record without one was written before records were
versioned and has the shape of version 1, so older stores still read; a record newer than
this code knows is refused by name (the file and both versions) instead of being misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from pneumo_core.errors import InputError


class StoredRecord(BaseModel):
    """A versioned JSON record; `read` turns a bad or too new one into one InputError line."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    VERSION: ClassVar[int] = 1
    format_version: int = 1

    @classmethod
    def read(cls, data: Any, where: str) -> Self:
        """The record stored at `where` (a key or URL, for the message)."""
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise InputError(
                f"{where}: format version {version!r} is newer than this pneumo reads "
                f"({cls.VERSION}); upgrade pneumo to read it"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InputError(f"{where}: field {field}: {first['msg']}") from None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, with the version this code writes."""
        return self.model_dump(mode="json") | {"format_version": self.VERSION}


class FoldResult(StoredRecord):
    """A trained fold (runs/<id>/fold-<k>/done.json): a fold with one is never trained again.
    Fields an older pneumo did not record read as None."""

    run_id: str | None = None
    fold: int
    epochs: int | None = None
    best_epoch: int | None = None
    best_val_map: float | None = None
    # With val_every > 1 only these epochs were candidates for the best checkpoint, which
    # the out-of-fold predictions come from.
    validated_epochs: list[int] | None = None
    oof_checkpoint_epoch: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    device: str | None = None
    model_info: dict[str, Any] = {}
    seconds_last_session: float | None = None


class FoldScore(BaseModel):
    """One fold's images scored with the post-processing tuned on the other folds."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    fold: int
    map: float | None = None
    images: int | None = None
    images_scored: int | None = None
    tuned_on_other_folds: dict[str, Any] = {}


class CurvePoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    threshold: float
    map: float | None


class Evaluation(StoredRecord):
    """The out-of-fold evaluation (runs/<id>/evaluation.json). Scores are None (null) when
    no image was scored (JSON has no NaN); fields an older pneumo did not record read as None."""

    run_id: str | None = None
    dataset: str | None = None
    image_size: int | None = None
    oof_map: float | None = None
    oof_map_se: float | None = None
    oof_map_in_sample: float | None = None
    protocol: str | None = None  # None: evaluated before protocols were named
    tuning: str | None = None
    images: int | None = None
    images_scored: int | None = None
    predicted_boxes: int | None = None
    threshold: float | None = None
    max_boxes: int | None = None
    shrink: float | None = None
    postprocess: dict[str, Any] = {}  # the PostprocessConfig the submission uses
    map_at_configured_postprocess: float | None = None
    per_fold: list[FoldScore] = []
    curve: list[CurvePoint] = []
    has_box: dict[str, float | int | None] = {}
    seconds: float | None = None


class RunRecord(StoredRecord):
    """Facts about a run that are not configuration (runs/<id>/run.json): when it was made
    and from which data. Written once, when the run is created."""

    run_id: str
    created: str
    source: str | None = None
    manifest_digest: str | None = None


class TestPrediction(BaseModel):
    """The outcome of predicting a run's test images, as the report shows it: where the
    submission is and which test images prepare quarantined, or why prediction failed."""

    model_config = ConfigDict(frozen=True)
    submission: str | None = None  # its URL
    quarantined: list[dict[str, str]] = []  # patientId, key, reason: empty PredictionString
    error: str | None = None
