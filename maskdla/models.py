"""``python -m maskdla.models``: the models shipped in the package, and packing a new one.

    python -m maskdla.models                       # name, classes, backbone, size, summary
    python -m maskdla.models pack RUN/checkpoint_final.pth --out maskdla/weights/NAME.safetensors

A shipped model's name works wherever a checkpoint path does (:mod:`maskdla.zoo`).
"""
from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from maskdla.cli import run_main
from maskdla.errors import InputError


def list_models() -> None:
    from maskdla.zoo import SHIPPED, read_shipped

    for name, shipped in SHIPPED.items():
        try:
            checkpoint = read_shipped(name)
        except InputError as error:  # listed all the same, with what is wrong
            print(f"{name}: unavailable ({error})")
            continue
        config = checkpoint["config"]
        size_mb = shipped.path.stat().st_size / 1e6
        print(f"{name}: {config['backbone']}, {len(checkpoint['classes'])} classes "
              f"({', '.join(checkpoint['classes'])}), test size {config['min_size'][-1]} px, "
              f"{size_mb:.1f} MB\n    {shipped.summary}; model card: docs/models.md")


def pack_checkpoint(checkpoint_path: str, out: str, half: bool) -> None:
    from maskdla.checkpoint import load_checkpoint, load_model
    from maskdla.zoo import pack

    checkpoint = load_checkpoint(checkpoint_path)
    load_model(checkpoint)  # refuse what would not rebuild
    sha256, size = pack(checkpoint, out, half=half)
    print(json.dumps({"file": out, "sha256": sha256, "bytes": size}))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m maskdla.models``: ``list`` (the default) and ``pack``."""
    parser = argparse.ArgumentParser(prog="python -m maskdla.models",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="the shipped models (the default)")
    packer = commands.add_parser("pack", help="a checkpoint -> a shipped .safetensors file "
                                 "(model, config, classes; prints its SHA-256 for maskdla.zoo)")
    packer.add_argument("checkpoint")
    packer.add_argument("--out", required=True, help="the .safetensors file to write")
    packer.add_argument("--fp32", action="store_true", help="keep float32 (default float16)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pack":
        pack_checkpoint(args.checkpoint, args.out, half=not args.fp32)
    else:
        list_models()
    return 0


if __name__ == "__main__":
    run_main(main)
