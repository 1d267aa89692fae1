"""``python -m maskdla.synth --out DIR``: write the synthetic music-manuscript corpus.

The corpus (images + PAGE-XML, ``DIR/train`` and ``DIR/test``) is maskdla's embedded
default data set; see :mod:`maskdla.data.synthetic`.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from maskdla.cli import non_negative_int, positive_int, run_main
from maskdla.data.synthetic import (CLASSES, DEFAULT_PAGES, DEFAULT_TRAIN, DEFAULT_WIDTH,
                                    generate_corpus)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.synth",
        description="Write synthetic music-manuscript pages (classes: "
                    f"{', '.join(CLASSES)}) as DIR/train/*.jpg + DIR/train/page/*.xml and "
                    "likewise DIR/test; deterministic for a seed.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="corpus folder to create (must not exist or be empty)")
    parser.add_argument("--pages", type=positive_int, default=DEFAULT_PAGES,
                        help=f"pages in all (default {DEFAULT_PAGES}, as VORAU-253)")
    parser.add_argument("--train", type=non_negative_int, default=DEFAULT_TRAIN,
                        help=f"pages of the training split, the rest are test pages "
                             f"(default {DEFAULT_TRAIN})")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--width", type=positive_int, default=DEFAULT_WIDTH, metavar="PX",
                        help=f"page width in px, height = width * 3900/2700 (default "
                             f"{DEFAULT_WIDTH}; 2700 = the real scans' size)")
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 20 == 0):
            print(f"\r{done}/{total} pages", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

    folder = generate_corpus(args.out, pages=args.pages, train=args.train, seed=args.seed,
                             width=args.width, progress=progress)
    print(f"wrote {args.pages} pages ({args.train} train, {args.pages - args.train} test) to "
          f"{folder} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
