"""Pretrained weights: fetched once through torchvision's weights API, kept in the object store.

Every worker, container and re-run then loads the same verified file without network.
Training looks for weights in this order: the configuration's `weights_path`, the store
(`models/weights/<file>` with `<file>.json` holding its sha256), torch's hub cache. With
`pretrained=true` and nothing found, `resolve` raises before any training starts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torchvision
from torchvision.models import WeightsEnum
from torchvision.models.detection.retinanet import RetinaNet_ResNet50_FPN_Weights

from pneumo_core.config.run import RunConfig
from pneumo_core.errors import InputError, NetworkError, StorageError
from pneumo_core.storage.base import ObjectStore, file_sha256

log = logging.getLogger(__name__)

WEIGHTS_PREFIX = "models/weights"
# torchvision names its files <name>-<first hex digits of the sha256>.pth (torch.hub's rule)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


def published(backbone: str) -> list[WeightsEnum]:
    """torchvision's weights for a backbone, best first: for ResNet-50 the COCO RetinaNet
    (backbone, FPN and box head trained for detection), then the ImageNet classifier."""
    imagenet = {
        "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
        "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    }
    if backbone not in imagenet:
        raise InputError(f"backbone {backbone!r}: choose one of {sorted(imagenet)}")
    if backbone == "resnet50":
        return [RetinaNet_ResNet50_FPN_Weights.COCO_V1, imagenet[backbone]]
    return [imagenet[backbone]]


def file_name(weights: WeightsEnum) -> str:
    return weights.url.rsplit("/", 1)[-1]


def store_key(name: str) -> str:
    return f"{WEIGHTS_PREFIX}/{name}"


@dataclass(frozen=True)
class WeightsFile:
    """A local weights file, verified, and where it was found."""

    path: Path
    sha256: str
    origin: str  # "weights_path", "store <url>" or "torch hub cache"

    @property
    def name(self) -> str:
        return self.path.name


def fetch(store: ObjectStore, backbone: str, progress: bool = False) -> list[str]:
    """Download (or reuse from torch's hub cache) the backbone's published weights, check the
    published hash, and put each file in the store with its sha256; returns the store keys.
    A file already in the store with a matching record is left as it is."""
    keys = []
    for weights in published(backbone):
        name = file_name(weights)
        key = store_key(name)
        if _stored_sha256(store, name) is not None:
            log.info("%s is already in the store", store.url(key))
            keys.append(key)
            continue
        try:
            # torchvision's own download: torch.hub checks the hash prefix in the file name
            weights.get_state_dict(progress=progress, check_hash=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
            raise NetworkError(
                f"could not fetch {weights} from {weights.url}: {exc}. On a host without "
                "internet: run `pneumo weights fetch` where there is one (same --storage), or "
                "build the worker image with WEIGHTS_BACKBONES, or --set pretrained=false"
            ) from None
        path = _hub_checkpoints() / name
        sha256 = _verified_hub_file(path)
        if sha256 is None:
            raise NetworkError(f"{path}: its sha256 does not match the hash in its name")
        store.put_file(key, path)
        store.put_json(
            f"{key}.json",
            {
                "file": name,
                "sha256": sha256,
                "size": path.stat().st_size,
                "url": weights.url,
                "weights": str(weights),
                "backbone": backbone,
                "fetched": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        log.info("stored %s (sha256 %s)", store.url(key), sha256)
        keys.append(key)
    return keys


def in_store(store: ObjectStore, backbone: str) -> bool:
    """Whether the store holds at least one verified-on-write weights file for `backbone`."""
    return any(_stored_sha256(store, file_name(w)) for w in published(backbone))


def resolve(config: RunConfig, store: ObjectStore | None) -> WeightsFile | None:
    """The weights file a new model of `config` starts from; None = random weights
    (pretrained=false). InputError, naming every place looked at, when none is found."""
    if config.weights_path:
        path = Path(config.weights_path).expanduser()
        if not path.is_file():
            raise InputError(f"weights_path {path}: file not found")
        return WeightsFile(path, file_sha256(path), "weights_path")
    if not config.pretrained:
        return None
    names = [file_name(w) for w in published(config.backbone)]
    looked = ["weights_path (not set)"]
    if store is not None:
        for name in names:
            expected = _stored_sha256(store, name)
            if expected is None:
                continue
            path = store.local_path(store_key(name))
            actual = file_sha256(path)
            if actual != expected:
                raise StorageError(
                    f"{store.url(store_key(name))}: sha256 {actual} differs from its record "
                    f"{expected}; delete it and run `pneumo weights fetch` again"
                )
            return WeightsFile(path, actual, f"store {store.url(store_key(name))}")
        looked.append(f"the store ({', '.join(store.url(store_key(n)) for n in names)})")
    hub = _hub_checkpoints()
    for name in names:
        sha256 = _verified_hub_file(hub / name)
        if sha256 is not None:
            return WeightsFile(hub / name, sha256, "torch hub cache")
    looked.append(f"torch's hub cache ({', '.join(str(hub / n) for n in names)})")
    raise InputError(
        f"pretrained=true but no {config.backbone} weights were found; looked in "
        f"{'; '.join(looked)}. Either fetch them once: `pneumo weights fetch --backbone "
        f"{config.backbone} --storage <same storage>`, or train from random weights: "
        "`--set pretrained=false`"
    )


def _stored_sha256(store: ObjectStore, name: str) -> str | None:
    """The recorded sha256 of a stored weights file; None when the file or record is missing."""
    key = store_key(name)
    if not (store.exists(key) and store.exists(f"{key}.json")):
        return None
    try:
        return str(store.get_json(f"{key}.json")["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{store.url(key)}.json: not a weights record ({exc!r})") from None


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _verified_hub_file(path: Path) -> str | None:
    """sha256 of a hub-cache file whose content matches the hash prefix in its name; None
    when absent. A mismatch is an error: a corrupt cache must not pass silently."""
    if not path.is_file():
        return None
    sha256 = file_sha256(path)
    match = _HASH_IN_NAME.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise InputError(
            f"{path}: content sha256 {sha256[:12]}... does not match the {match.group(1)} in "
            "its name (a corrupt download?); delete the file"
        )
    return sha256
