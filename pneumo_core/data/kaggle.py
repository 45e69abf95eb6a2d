"""The Kaggle API: log in with the user's credentials and download a competition's zip.

A `kaggle://<competition>` source is downloaded here into a temporary folder, then read like
any local zip (archive.py). Credentials are the kaggle package's own (KAGGLE_USERNAME and
KAGGLE_KEY, or kaggle.json); a missing or refused one is an InputError naming both ways in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pneumo_core.errors import InputError, NetworkError

KAGGLE_SCHEME = "kaggle://"
_CREDENTIALS_HELP = (
    "set KAGGLE_USERNAME and KAGGLE_KEY, or save your API token as ~/.kaggle/kaggle.json "
    '({"username": "...", "key": "..."}, from https://www.kaggle.com/settings/api)'
)


@contextlib.contextmanager
def downloaded_competition(competition: str) -> Iterator[Path]:
    """The competition's zip, downloaded into a temporary folder removed when the block ends."""
    api = kaggle_api()
    with tempfile.TemporaryDirectory(prefix="pneumo-kaggle-") as tmp:
        yield _download_competition(api, competition, Path(tmp))


def kaggle_api() -> Any:
    """An authenticated `kaggle.KaggleApi`; InputError naming both ways to log in if we can't."""
    config = _kaggle_config_file()
    if not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) and not config:
        raise InputError(f"no Kaggle credentials found: {_CREDENTIALS_HELP}")
    # The kaggle package authenticates and prints help on import; keep our stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        if config:
            api.config = str(config)
        try:
            api.authenticate()
        except SystemExit as exc:
            raise InputError(f"Kaggle rejected the credentials: {_CREDENTIALS_HELP}") from exc
    return api


def _kaggle_config_file() -> Path | None:
    """kaggle.json where the kaggle package looks for it, if it holds a username and key."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        candidates = [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    else:
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        candidates = [Path.home() / ".kaggle", xdg / "kaggle"]
    for folder in candidates:
        path = folder / "kaggle.json"
        if not path.is_file():
            continue
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not readable as JSON ({type(exc).__name__})") from exc
        if isinstance(values, dict) and values.get("username") and values.get("key"):
            return path
        raise InputError(f"{path}: needs both 'username' and 'key'")
    return None


def _download_competition(api: Any, competition: str, dest_dir: Path) -> Path:
    """The one network call: fetch the competition's zip into dest_dir and return its path."""
    import requests

    try:
        api.competition_download_files(
            competition, path=str(dest_dir), quiet=not sys.stderr.isatty()
        )
    except requests.RequestException as exc:  # HTTPError, or no connection (no response)
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403, 404):
            raise InputError(
                f"Kaggle refused the download of {competition!r} (HTTP {status}): check the "
                "competition name and your credentials, and accept the rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules"
            ) from exc
        answer = f"HTTP {status}" if status else type(exc).__name__
        raise NetworkError(
            f"Kaggle failed the download of {competition!r} ({answer}): {exc}"
        ) from exc
    return dest_dir / f"{competition}.zip"
