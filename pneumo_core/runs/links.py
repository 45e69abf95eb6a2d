"""Links and pictures for people: URLs a browser can open, and plots small enough to embed.

Workers reach the store at an address a person's browser often cannot (in the compose stack
`http://seaweedfs:8333`), so links shown to people are signed for PNEUMO_S3_PUBLIC_ENDPOINT
when it is set. Presigned links die after at most seven days; every link says when, and
`pneumo runs --links RUN_ID` signs fresh ones.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pneumo_core.errors import InputError
from pneumo_core.layout import (
    CHECKPOINT_BEST,
    CONFIG,
    EVALUATION,
    MODEL_CARD,
    PLOTS,
    REPORT,
    SUBMISSION,
    run_key,
)
from pneumo_core.settings import settings
from pneumo_core.storage.base import ObjectStore

PUBLIC_ENDPOINT_ENV = "PNEUMO_S3_PUBLIC_ENDPOINT"
MAX_EXPIRY_S = 7 * 86400  # the longest a SigV4 presigned URL may live
EMBED_WIDTH_PX = 900  # a plot embedded in a UI artifact is scaled down to this width


@dataclass(frozen=True)
class Link:
    key: str
    url: str  # http(s) on S3, file:// on a local store
    expires: datetime | None  # None: does not expire (file://)

    def note(self) -> str:
        """When the link stops working, in words, with how to get a fresh one."""
        if self.expires is None:
            return "a file on this machine"
        return f"expires {self.expires:%Y-%m-%d %H:%M} UTC; `pneumo runs --links RUN_ID` renews"


def public_endpoint() -> str | None:
    return settings().s3_public_endpoint


def link(store: ObjectStore, key: str, expires_s: int = MAX_EXPIRY_S) -> Link:
    """A link a person opens: presigned for the public endpoint on S3, file:// otherwise."""
    expires_s = min(int(expires_s), MAX_EXPIRY_S)
    url = store.presigned_url(key, expires_s, endpoint_url=public_endpoint())
    if url is None:
        return Link(key, store.url(key), None)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=expires_s)
    return Link(key, url, expires)


RUN_OUTPUTS = (REPORT, MODEL_CARD, SUBMISSION, EVALUATION, CONFIG)


def run_links(store: ObjectStore, run_id: str, expires_s: int = MAX_EXPIRY_S) -> dict[str, Link]:
    """Fresh links to a run's outputs that exist: documents, plots, best checkpoints. An
    unknown run is the InputError every command gives for one (`Run.config`'s)."""
    keys = store.list(run_key(run_id, ""))
    if run_key(run_id, CONFIG) not in keys:
        raise InputError(f"run {run_id}: no {run_key(run_id, CONFIG)} in {store.uri}")
    wanted = {run_key(run_id, name) for name in RUN_OUTPUTS}
    plots = run_key(run_id, PLOTS + "/")
    chosen = [
        k for k in keys if k in wanted or k.startswith(plots) or k.endswith("/" + CHECKPOINT_BEST)
    ]
    prefix = run_key(run_id, "")
    return {k.removeprefix(prefix): link(store, k, expires_s) for k in chosen}


def data_uri(png: bytes, max_width: int = EMBED_WIDTH_PX) -> str:
    """The image as a `data:image/png;base64,...` URI, scaled down to `max_width` and reduced
    to a 64-colour palette: plots keep their lines and text at a fraction of the bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            height = round(image.height * max_width / image.width)
            image = image.resize((max_width, height), Image.Resampling.LANCZOS)
        small = image.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
