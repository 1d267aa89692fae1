"""``python -m maskdla.predict``: page images -> PAGE-XML (+ overlays, COCO results).

Command line::

    python -m maskdla.predict CHECKPOINT INPUTS... --out DIR [--score-thresh 0.5]
        [--overlap-thresh 0.5] [--no-merge-classes CLASS ...] [--largest-component-only]
        [--simplify PX] [--min-area PX2] [--overlay] [--coco preds.json]
        [--batch-size N] [--device D]

INPUTS are image files or folders (their ``*.jpg *.jpeg *.png *.tif *.tiff``, not
recursive). For every image ``DIR/page/STEM.xml`` is written (PAGE 2019-07-15, the
Transkribus layout: the XML in ``page/`` beside where the image would lie), with
``--overlay`` also ``DIR/overlay/STEM.jpg``. An image that cannot be read is reported on
one line and skipped; the exit code is 0 when every image went through, 1 when some
failed, 2 for a bad checkpoint, flag or input path (nothing is predicted then).
The pipeline per page is :class:`maskdla.prediction.Predictor`'s (docs/prediction.md).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from maskdla.cli import non_negative_float, positive_int, run_main
from maskdla.data.pagexml import write_page
from maskdla.errors import InputError
from maskdla.files import write_json_atomic
from maskdla.prediction import (IMAGE_SUFFIXES, Predictor, detections_to_page,
                                page_to_coco_results)
from maskdla.prediction.overlay import save_overlay

__all__ = ["Predictor", "detections_to_page", "page_to_coco_results", "find_images",
           "IMAGE_SUFFIXES", "main"]

PathLike = Union[str, "os.PathLike[str]"]




def find_images(inputs: Sequence[PathLike]) -> List[Path]:
    """Image files named or inside the folders named (not recursive), in the given order,
    each folder sorted by name.

    Raises:
        InputError: a path that does not exist, a folder without images, a file that is
            not an image by its suffix, or two images that would write the same
            ``page/STEM.xml``.
    """
    images: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(path for path in item.iterdir()
                           if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in this folder", item)
            images.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"not an image file (expected {' '.join(IMAGE_SUFFIXES)})",
                                 item)
            images.append(item)
        else:
            raise InputError("no such file or folder", item)
    images = list(dict.fromkeys(images))
    seen: Dict[str, Path] = {}
    for path in images:
        if path.stem in seen:
            raise InputError(f"same output name page/{path.stem}.xml as {seen[path.stem]}", path)
        seen[path.stem] = path
    return images


def _unit_float(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.predict",
        description="Predict the layout regions of page images and write PAGE-XML "
                    "(DIR/page/STEM.xml per image). Exit code 0: all images done; 1: some "
                    "images could not be read (reported, skipped); 2: bad checkpoint or flag.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a maskdla checkpoint (.pth)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"image files or folders of images ({' '.join(IMAGE_SUFFIXES)})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: DIR/page/STEM.xml (and DIR/overlay/STEM.jpg)")
    parser.add_argument("--score-thresh", type=_unit_float, default=0.5, metavar="S",
                        help="drop detections scoring below S (default 0.5)")
    parser.add_argument("--overlap-thresh", type=_unit_float, default=0.5, metavar="T",
                        help="merge regions whose intersection exceeds T times the smaller "
                             "region's area; the higher-scoring class wins (default 0.5; "
                             "1 disables merging)")
    parser.add_argument("--no-merge-classes", nargs="+", default=[], metavar="CLASS",
                        help="classes never merged with another region, e.g. drop-capital")
    parser.add_argument("--largest-component-only", action="store_true",
                        help="one region per detection: its largest connected component "
                             "(default: every component is a region)")
    parser.add_argument("--simplify", type=non_negative_float, default=1.0, metavar="PX",
                        help="polygon simplification tolerance in pixels of the original "
                             "image (default 1; 0 keeps every vertex)")
    parser.add_argument("--min-area", type=non_negative_float, default=0.0, metavar="PX2",
                        help="drop components of at most this many square pixels (default 0)")
    parser.add_argument("--mask-thresh", type=_unit_float, default=0.5, metavar="P",
                        help="mask probability from which a pixel is in a region (default 0.5)")
    parser.add_argument("--max-detections", type=positive_int, default=None, metavar="N",
                        help="at most N detections per image (default: the model's, 100)")
    parser.add_argument("--overlay", action="store_true",
                        help="also draw the regions over each image: DIR/overlay/STEM.jpg")
    parser.add_argument("--coco", metavar="JSON",
                        help="also write all regions as COCO results (bbox + RLE segmentation; "
                             "image ids in input order from 1, with file_name)")
    parser.add_argument("--batch-size", type=positive_int, default=2, metavar="N",
                        help="images per model batch (default 2)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    return parser


def _batches(paths: Sequence[Path], batch_size: int, predictor: Predictor,
             executor: concurrent.futures.Executor
             ) -> Iterator[List[Tuple[Path, "concurrent.futures.Future"]]]:
    """Batches of (path, future of predictor.load(path)); the next batch is decoded in the
    background while the current one runs through the model."""
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]

    def submit(chunk: Sequence[Path]) -> List[Tuple[Path, "concurrent.futures.Future"]]:
        return [(path, executor.submit(predictor.load, path)) for path in chunk]

    pending = submit(chunks[0]) if chunks else []
    for number in range(len(chunks)):
        current = pending
        if number + 1 < len(chunks):
            pending = submit(chunks[number + 1])
        yield current


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    paths = find_images(args.inputs)
    image_ids = {path: number for number, path in enumerate(paths, 1)}
    out = Path(args.out)
    if args.coco and Path(args.coco).is_dir():
        raise InputError("--coco must name a file, not a folder", args.coco)
    try:
        (out / "page").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out: cannot create the output folder ({error.strerror})",
                         out) from None
    predictor = Predictor(args.checkpoint, device=args.device, score_thresh=args.score_thresh,
                          overlap_thresh=args.overlap_thresh,
                          no_merge_classes=args.no_merge_classes, tolerance=args.simplify,
                          min_area=args.min_area, largest_only=args.largest_component_only,
                          mask_thresh=args.mask_thresh, max_detections=args.max_detections)
    failed: List[Path] = []
    coco_results: List[dict] = []
    regions = 0
    progress = tqdm(total=len(paths), unit="image", desc="predict", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        for batch in _batches(paths, args.batch_size, predictor, executor):
            loaded = []
            for path, future in batch:
                try:
                    loaded.append((path, future.result()))
                except InputError as error:
                    failed.append(path)
                    progress.write(f"maskdla: skipped: {error}", file=sys.stderr)
                    progress.update(1)
            detections = predictor.detect([tensor for _, (tensor, _, _) in loaded])
            for (path, (tensor, original, name)), detection in zip(loaded, detections):
                page = predictor.to_page(detection, tuple(tensor.shape[-2:]), original, name)
                write_page(page, out / "page" / f"{path.stem}.xml")
                regions += len(page.regions)
                if args.overlay:
                    try:
                        save_overlay(path, page, predictor.classes,
                                     out / "overlay" / f"{path.stem}.jpg")
                    except InputError as error:  # decodable at model size, not in full
                        failed.append(path)
                        progress.write(f"maskdla: overlay skipped: {error}", file=sys.stderr)
                if args.coco:
                    coco_results.extend(page_to_coco_results(page, image_ids[path],
                                                             predictor.classes))
                progress.update(1)
    progress.close()
    if args.coco:
        write_json_atomic(args.coco, coco_results)
    done = len(paths) - len(set(failed))
    print(f"{done} of {len(paths)} images -> {out / 'page'} ({regions} regions)"
          + (f"; {len(set(failed))} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
