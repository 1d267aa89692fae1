"""``python -m maskdla.eval``: COCO metrics of a checkpoint, or of a saved results file.

Command line::

    python -m maskdla.eval CHECKPOINT [--data DIR | --ann JSON --images DIR] [--split test]
                           [--out metrics.json] [--batch-size N] [--device D]
    python -m maskdla.eval --predictions RESULTS.json --ann GT.json [--out metrics.json]

The first form takes everything else (backbone, classes, image size, the test data when
none is given) from the checkpoint's config; the second scores any system's COCO results
file, without a model. The library side is :mod:`maskdla.evaluation`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from maskdla.checkpoint import load_model
from maskdla.cli import positive_int, run_main
from maskdla.data.dataset import Dataset
from maskdla.data.sources import run_dataset
from maskdla.errors import InputError
from maskdla.evaluation import evaluate, predict_coco_results
from maskdla.evaluation.coco import coco_metrics, format_table, load_ground_truth, load_results
from maskdla.files import write_json_atomic
from maskdla.inference import resolve_device, test_size

__all__ = ["evaluate", "predict_coco_results", "build_parser", "main"]


def _check_writable(path: Optional[str]) -> None:
    """Fail before a long evaluation, not after it, when an output cannot be written."""
    if path is None:
        return
    folder = Path(path).resolve().parent
    while not folder.exists():
        folder = folder.parent
    if Path(path).is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError("cannot write this output file (a folder, or no write permission)",
                         path)


def _dataset(args: argparse.Namespace, checkpoint: Dict[str, Any]) -> Any:
    """The data to evaluate on: the flags' or, without them, the run's test data."""
    config = checkpoint["config"]
    classes = list(checkpoint["classes"])
    if not (args.ann or args.data):
        return run_dataset(config, args.split, classes=classes)
    min_size, max_size = test_size(config)
    options = {"classes": classes, "class_map": config.class_map,
               "fold_subtypes": config.fold_subtypes, "min_size": min_size, "max_size": max_size}
    if args.ann:
        return Dataset.from_coco(args.ann, args.images, **options)
    return Dataset.from_folder(args.data, split=args.split, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.eval",
        description="COCO AP/AP50/AP75/APs/APm/APl/AR (bbox and segm, as pycocotools computes "
                    "them) of a checkpoint on a data set, or of a saved COCO results file.")
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="a maskdla checkpoint; backbone, classes and image size come from "
                             "its config, and so does the data unless --data or --ann is given")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset folder (DIR/SPLIT/*.jpg with PAGE or ALTO in DIR/SPLIT/page/, "
                             "DIR/SPLIT/alto/ or next to the images)")
    parser.add_argument("--ann", metavar="JSON",
                        help="COCO ground truth: with --images to run a model on its images, "
                             "or with --predictions to score a results file")
    parser.add_argument("--images", metavar="DIR", help="image folder of --ann")
    parser.add_argument("--split", default="test",
                        help="split folder of --data (or of the run's data) (default: test)")
    parser.add_argument("--predictions", metavar="RESULTS_JSON",
                        help="score this COCO results file (e.g. another system's output) "
                             "against --ann, without a model")
    parser.add_argument("--out", metavar="JSON", help="write the metrics to this file")
    parser.add_argument("--save-results", metavar="JSON",
                        help="also write the model's COCO results (RLE masks) to this file")
    parser.add_argument("--batch-size", type=positive_int, default=2,
                        help="images per forward pass (default: 2)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=2,
                        help="data loading worker processes (default: 2; 0 loads in-process)")
    parser.add_argument("--verbose", action="store_true",
                        help="show pycocotools' own output (its summary tables)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predictions is not None:
        if args.checkpoint or args.data or args.images or args.save_results:
            parser.error("--predictions scores a results file against --ann; it takes no "
                         "CHECKPOINT, --data, --images or --save-results")
        if not args.ann:
            parser.error("--predictions needs --ann GT.json")
        _check_writable(args.out)
        ground_truth = load_ground_truth(args.ann)
        results = load_results(args.predictions, ground_truth)
        metrics = coco_metrics(ground_truth, results, verbose=args.verbose)
    else:
        if not args.checkpoint:
            parser.error("give a CHECKPOINT, or --predictions RESULTS.json --ann GT.json")
        if args.data and (args.ann or args.images):
            parser.error("give either --data or --ann with --images, not both")
        if bool(args.ann) != bool(args.images):
            parser.error("--ann and --images go together (or use --predictions with --ann)")
        if args.workers < 0:
            parser.error("--workers must be >= 0")
        for output in (args.out, args.save_results):
            _check_writable(output)
        device = resolve_device(args.device)
        model, checkpoint = load_model(args.checkpoint, device)
        dataset = _dataset(args, checkpoint)
        results = predict_coco_results(model, dataset, batch_size=args.batch_size,
                                       device=device, num_workers=args.workers,
                                       classes=list(checkpoint["classes"]))
        if args.save_results:
            write_json_atomic(args.save_results, results)
        metrics = coco_metrics(dataset.coco, results, verbose=args.verbose)
    print(format_table(metrics))
    if args.out:
        write_json_atomic(args.out, metrics)
    return 0


if __name__ == "__main__":
    run_main(main)
