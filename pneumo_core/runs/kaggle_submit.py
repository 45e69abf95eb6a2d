"""Submit a run's submission.csv to the Kaggle competition, and keep a record of each try.

The file is checked against the competition's sample submission before anything leaves the
machine (Kaggle would reject it after the upload and count it against the daily limit), and
every submission is appended to runs/<run_id>/kaggle-submissions.jsonl with the file's
sha256 and Kaggle's answer, so what was sent from which run is never a guess.
Credentials are those of the download (kaggle.kaggle_api): never logged nor stored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.kaggle import kaggle_api
from pneumo_core.errors import InputError, ObjectNotFound, PneumoError
from pneumo_core.evaluation.submission import check_submission
from pneumo_core.layout import (
    SAMPLE_SUBMISSION,
    SUBMISSION,
    raw_key,  # not train: no torch at start
)
from pneumo_core.runs.run import Run
from pneumo_core.storage.backoff import sleep_before_retry
from pneumo_core.storage.base import ObjectStore, file_sha256

log = logging.getLogger(__name__)

COMPETITION = DEFAULT_DATASET  # the competition's slug, as in kaggle://<competition>
ATTEMPTS = 3
BACKOFF_S = 2.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class KaggleSubmitError(PneumoError):
    """Kaggle refused the submission or could not be reached; the message is one line."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class SubmissionRecord:
    """One line of kaggle-submissions.jsonl."""

    time: str  # ISO 8601, UTC
    run_id: str
    competition: str
    message: str
    file: str  # store URL of the file sent
    sha256: str
    submitted: bool
    answer: str  # Kaggle's message, or the error when it failed
    ref: int | None  # Kaggle's submission id when it accepted one
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_message(store: ObjectStore, run_id: str) -> str:
    """Run id, OOF mAP and configuration hash: enough to find the run from Kaggle's list."""
    run = Run(store, run_id)
    config_hash = run.config().config_hash()
    evaluation = run.evaluation()
    oof_map = evaluation.oof_map if evaluation else None
    figure = "n/a" if oof_map is None else f"{oof_map:.4f}"
    return f"pneumo run {run_id} | OOF mAP {figure} | config {config_hash[:12]}"


def checked_submission(store: ObjectStore, run_id: str, folder: Path) -> Path:
    """The run's submission.csv in `folder`, checked against the ingested sample submission;
    InputError naming the rows Kaggle would reject."""
    run = Run(store, run_id)
    dataset = run.config().dataset
    key = run.submission_key
    path = folder / SUBMISSION
    sample = folder / SAMPLE_SUBMISSION
    for source, dest in ((key, path), (raw_key(dataset, SAMPLE_SUBMISSION), sample)):
        try:
            store.get_file(source, dest)
        except ObjectNotFound:
            raise InputError(f"run {run_id}: {store.url(source)} does not exist") from None
    problems = check_submission(path, sample)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError(
            f"{store.url(key)} would be rejected: {'; '.join(problems[:5])}{more}; not submitted"
        )
    return path


def submit_run(
    store: ObjectStore,
    run_id: str,
    message: str | None = None,
    competition: str = COMPETITION,
    attempts: int = ATTEMPTS,
    backoff_s: float | None = None,
) -> SubmissionRecord:
    """Check, upload and record (`message`, if any, goes before the run id, OOF mAP and
    configuration hash); transient failures (connection, 408/429/5xx, a failed
    upload) are tried again up to `attempts` times, others fail at once. Every outcome is
    recorded; a failure then raises KaggleSubmitError with one line."""
    # the run id, OOF mAP and configuration hash always travel with the submission
    message = " | ".join(m for m in (message, default_message(store, run_id)) if m)
    with tempfile.TemporaryDirectory(prefix="pneumo-submit-") as tmp:
        path = checked_submission(store, run_id, Path(tmp))
        sha = file_sha256(path)
        api = kaggle_api()
        error: KaggleSubmitError | None = None
        answer: Any = None
        tried = 0
        for tried in range(1, attempts + 1):
            try:
                answer = _submit_once(api, path, message, competition)
                error = None
                break
            except KaggleSubmitError as exc:
                error = exc
                if not exc.transient or tried == attempts:
                    break
                log.warning("Kaggle submission try %d of %d failed: %s", tried, attempts, exc)
                sleep_before_retry(tried, BACKOFF_S if backoff_s is None else backoff_s)
    record = SubmissionRecord(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        run_id=run_id,
        competition=competition,
        message=message,
        file=store.url(Run(store, run_id).submission_key),
        sha256=sha,
        submitted=error is None,
        answer=str(error) if error else str(answer.message),
        ref=None if error else int(answer.ref),
        attempts=tried,
    )
    Run(store, run_id).append_kaggle_record(record.to_dict())
    if error is not None:
        raise error
    return record


def _submit_once(api: Any, path: Path, message: str, competition: str) -> Any:
    """One competition_submit; its failures as KaggleSubmitError (the client both raises
    HTTP errors and returns a failed upload as an answer with no submission id)."""
    import requests

    try:
        # the client prints progress and errors on stdout; ours carries only results
        with contextlib.redirect_stdout(io.StringIO()):
            answer = api.competition_submit(str(path), message, competition, quiet=True)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise KaggleSubmitError(
            f"Kaggle refused the submission to {competition!r} (HTTP {status}): "
            f"{_one_line(exc)}{_hint(status, competition)}",
            transient=status in TRANSIENT_STATUS,
        ) from exc
    except requests.RequestException as exc:
        raise KaggleSubmitError(
            f"Kaggle could not be reached ({type(exc).__name__}): {_one_line(exc)}", True
        ) from exc
    if not getattr(answer, "ref", 0):
        raise KaggleSubmitError(
            f"Kaggle did not take the submission to {competition!r}: "
            f"{_one_line(getattr(answer, 'message', '') or 'no submission id in the answer')}",
            transient=True,  # the file upload failed; a new try uploads to a fresh URL
        )
    return answer


def _hint(status: int | None, competition: str) -> str:
    if status in (401, 403):
        return (
            "; check KAGGLE_USERNAME/KAGGLE_KEY and that you accepted the rules at "
            f"https://www.kaggle.com/competitions/{competition}/rules"
        )
    if status == 429:
        return "; the daily submission limit may be reached"
    return ""


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]
