"""`pneumo weights fetch`: torchvision's published weights into the object store, verified,
so that every worker trains from the same file without network (pneumo_core.weights)."""

from __future__ import annotations

import argparse

from flows.cli.common import add_storage
from pneumo_core.model.backbones import BACKBONES


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from pneumo_core.storage.open import open_store

    store = open_store(args.storage)
    store.probe()  # a store that cannot take the file fails before torch and the download
    from pneumo_core.model import weights

    for key in weights.fetch(store, args.backbone, progress=True):
        record = store.get_json(f"{key}.json")
        print(f"{store.url(key)}  sha256 {record['sha256']}  ({record['weights']})")
    return 0


def add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="pretrained weights in the object store")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        help="download torchvision's published weights for a backbone (ImageNet ResNet; "
        "for resnet50 also the COCO RetinaNet), check their hash, keep them in the store",
    )
    fetch.add_argument("--backbone", choices=BACKBONES, default="resnet50")
    add_storage(fetch)
    fetch.set_defaults(handler=cmd_weights_fetch, log_lines=True)
