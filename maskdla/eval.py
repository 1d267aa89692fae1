"""``python -m maskdla.eval``: COCO and layout metrics of a checkpoint, or of saved
predictions.

Command line::

    python -m maskdla.eval CHECKPOINT [--data DIR | --ann JSON --images DIR] [--split test]
                           [--out metrics.json] [--batch-size N] [--device D]
                           [--box-score-thresh S] [--proposal-recall]
    python -m maskdla.eval --predictions RESULTS.json|PAGE_DIR|FILE.xml
                           (--ann GT.json [--images DIR] | --data DIR [--split test])
                           [--out metrics.json]
    python -m maskdla.eval --lines --predictions PRED_DIR --data DIR [--split test]
                           [--out metrics.json] [--table pages.md|pages.csv] [--tolerance PX]

The first form takes everything else (backbone, classes, image size, the test data when
none is given) from the checkpoint's config; the second scores any system's COCO results
file or PAGE files, without a model. Both print the COCO table, then the layout metrics
(:mod:`maskdla.evaluation.layout`; ``--no-layout`` skips them); ``--worst N`` draws the N
pages of lowest region F1 beside their ground truth; ``--proposal-recall`` adds, for a
checkpoint, the per-class recall of its RPN proposals (:mod:`maskdla.evaluation.proposals`:
is a class that scores no AP proposed at all?). The third scores the text lines of PAGE
or ALTO predictions (any tool's, paired with the ground truth by file stem): baseline
P/R/F1 of the READ-BAD scheme and line-polygon IoU F1 (:mod:`maskdla.evaluation.lines`).
The library side is :mod:`maskdla.evaluation`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskdla.checkpoint import load_model
from maskdla.cli import non_negative_float, non_negative_int, positive_float, positive_int, run_main
from maskdla.data.archives import data_folder
from maskdla.data.coco import folder_to_coco
from maskdla.data.dataset import Dataset, View
from maskdla.data.layout import collect_layout_files, read_layout
from maskdla.data.page import Page
from maskdla.data.reading import UnknownClasses
from maskdla.data.sources import report_specks, run_dataset
from maskdla.errors import InputError
from maskdla.evaluation import EvalSettings, evaluate, predict_coco_results
from maskdla.evaluation.coco import coco_metrics, format_table, load_ground_truth, load_results
from maskdla.evaluation.layout import (PageRegions, format_layout_tables, layout_metrics,
                                       worst_pages)
from maskdla.evaluation.layout_inputs import (predictions_from_pages, predictions_from_results,
                                              results_from_predictions, save_side_by_side,
                                              truth_from_coco)
from maskdla.evaluation.lines import format_line_tables, line_metrics, page_table
from maskdla.evaluation.evaluators import EvaluationInputs, run_evaluators
from maskdla.evaluation.proposals import format_recall_table
from maskdla.files import write_bytes_atomic, write_json_atomic
from maskdla.inference import resolve_device, test_size

__all__ = ["EvalSettings", "evaluate", "predict_coco_results", "build_parser", "main"]

#: the defaults of the flags that are evaluation settings
DEFAULTS = EvalSettings()


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


def _check_folder_writable(path: Path) -> None:
    """Fail before the evaluation when the --worst folder cannot be made or written."""
    folder = path.resolve()
    if folder.exists() and not folder.is_dir():
        raise InputError("cannot write overlays here: not a folder", path)
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError("cannot write overlays here (no write permission)", path)


def _dataset(args: argparse.Namespace, checkpoint: Dict[str, Any]) -> Any:
    """The data to evaluate on: the flags' or, without them, the run's test data."""
    config = checkpoint["config"]
    if args.min_region_size is not None:
        config = dataclasses.replace(config, min_region_size=args.min_region_size)
    classes = list(checkpoint["classes"])
    min_size, max_size = test_size(config)
    options = {"classes": classes, "class_map": config.class_map,
               "fold_subtypes": config.fold_subtypes,
               "view": View(min_size=min_size, max_size=max_size,
                            min_region_size=config.min_region_size)}
    try:
        if not (args.ann or args.data):
            return run_dataset(config, args.split, classes=classes)
        if args.ann:
            dataset = Dataset.from_coco(args.ann, args.images, **options)
        else:
            dataset = Dataset.from_folder(args.data, split=args.split, **options)
        report_specks(dataset, config.min_region_size, args.split)
        return dataset
    except UnknownClasses as error:  # its advice names training's flags, which eval lacks
        if args.ann:
            source, where = args.ann, ""
        elif args.data:
            source, where = Path(args.data) / args.split, f" (split {args.split})"
        else:
            source, where = None, f" (the run's data, split {args.split})"
        raise InputError(f"the ground truth{where} has classes the model was not trained on: "
                         f"{', '.join(error.missing)}; the checkpoint {args.checkpoint} knows "
                         f"{', '.join(classes)} (after its run's class map, if any); evaluate "
                         "on data of those classes", source) from None


def _fraction(text: str) -> float:
    """A number in (0, 1], for --match-iou."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _score(text: str) -> float:
    """A number in [0, 1], for --score-thresh and --box-score-thresh."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.eval",
        description="COCO AP/AP50/AP75/APs/APm/APl/AR (bbox and segm, as pycocotools computes "
                    "them) and layout metrics (region F1 with merges and splits, pixel IoU, "
                    "reading order) of a checkpoint on a data set, or of saved predictions.")
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="a maskdla checkpoint; backbone, classes and image size come from "
                             "its config, and so does the data unless --data or --ann is given")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset folder (DIR/SPLIT/*.jpg with PAGE or ALTO in DIR/SPLIT/page/, "
                             "DIR/SPLIT/alto/ or next to the images)")
    parser.add_argument("--ann", metavar="JSON",
                        help="COCO ground truth: with --images to run a model on its images, "
                             "or with --predictions to score saved predictions")
    parser.add_argument("--images", metavar="DIR", help="image folder of --ann")
    parser.add_argument("--split", default="test",
                        help="split folder of --data (or of the run's data) (default: test)")
    parser.add_argument("--predictions", metavar="PATH",
                        help="score saved predictions against --ann or --data, without a "
                             "model: a COCO results file (.json) or PAGE files (a .xml file, "
                             "or a folder of page/*.xml or *.xml)")
    parser.add_argument("--out", metavar="JSON", help="write the metrics to this file")
    parser.add_argument("--save-results", metavar="JSON",
                        help="also write the model's COCO results (RLE masks) to this file")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                        help=f"images per forward pass (default: {DEFAULTS.batch_size})")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=2,
                        help="data loading worker processes (default: 2; 0 loads in-process)")
    parser.add_argument("--box-score-thresh", type=_score, default=None, metavar="SCORE",
                        help="CHECKPOINT mode: keep the model's detections from this box score "
                             "for the COCO metrics (default: the model's own, 0.05 as "
                             "torchvision; YOLO's validator keeps 0.001). A lower threshold "
                             "lets under-confident classes reach the PR curve")
    parser.add_argument("--min-region-size", type=non_negative_float, default=None, metavar="PX",
                        help="ground-truth regions under PX pixels (sqrt(w x h) at the run's "
                             "test size) are ignored as specks (COCO iscrowd); default the "
                             "run's --min-region-size (checkpoint evaluation only)")
    parser.add_argument("--proposal-recall", action="store_true",
                        help="CHECKPOINT mode: also measure, per class, the share of regions "
                             "the RPN proposes (best of its top 100/300/1000 proposals at "
                             "IoU >= 0.5 and 0.7): a class that is not proposed cannot be "
                             "detected at any score threshold")
    parser.add_argument("--verbose", action="store_true",
                        help="show pycocotools' own output (its summary tables)")
    layout = parser.add_argument_group("layout metrics")
    layout.add_argument("--no-layout", action="store_true",
                        help="COCO metrics only (no region, pixel and reading-order figures)")
    layout.add_argument("--match-iou", type=_fraction, default=DEFAULTS.match_iou,
                        help="IoU from which a predicted region matches a ground-truth region "
                             f"(default: {DEFAULTS.match_iou})")
    layout.add_argument("--score-thresh", type=_score, default=DEFAULTS.score_thresh,
                        help="COCO results (a checkpoint's or a file's) scoring below are not "
                             f"regions for the layout metrics (default: {DEFAULTS.score_thresh}, "
                             "as maskdla.predict); PAGE predictions keep all their regions")
    layout.add_argument("--worst", type=non_negative_int, default=0, metavar="N",
                        help="draw the N pages of lowest region F1 beside their ground truth "
                             "into --worst-dir")
    layout.add_argument("--worst-dir", metavar="DIR",
                        help="folder of the --worst overlays (default: worst/ next to --out, "
                             "else ./worst)")
    lines = parser.add_argument_group("text-line metrics")
    lines.add_argument("--lines", action="store_true",
                       help="score the text lines of --predictions (PAGE or ALTO files, any "
                            "tool's, paired with the --data ground truth by file stem): "
                            "baseline P/R/F1 (READ-BAD / cBAD scheme) and line-polygon F1 "
                            "(one-to-one at --match-iou)")
    lines.add_argument("--tolerance", type=positive_float, metavar="PX",
                       help="--lines: one baseline tolerance in px for every line (default: "
                            "the scheme's, 0.25 x each ground-truth line's spacing)")
    lines.add_argument("--table", metavar="FILE",
                       help="--lines: write the per-page table here (.csv: CSV, else Markdown)")
    return parser


def _ground_truth(args: argparse.Namespace) -> Tuple[dict, Path]:
    """The ground truth of --predictions mode and its image folder."""
    if args.ann:
        return load_ground_truth(args.ann), Path(args.images or Path(args.ann).parent)
    folder = Path(args.data) / args.split
    if not folder.is_dir():
        raise InputError("no such dataset folder", folder)
    return folder_to_coco(folder)[0], folder


def _score_predictions(args: argparse.Namespace) -> Tuple[dict, dict, Dict[Any, Any], Path]:
    """--predictions mode: (metrics, ground truth, image id -> predicted regions, images)."""
    ground_truth, image_dir = _ground_truth(args)
    path = Path(args.predictions)
    if path.suffix.lower() == ".json":
        results = load_results(path, ground_truth)
        predicted = {} if args.no_layout else predictions_from_results(
            results, ground_truth, args.score_thresh)
    else:
        pages = [(read_layout(file), file) for file in collect_layout_files([path])]
        predicted, scores = predictions_from_pages(pages, ground_truth)
        results = results_from_predictions(predicted, scores, ground_truth)
    metrics = coco_metrics(ground_truth, results, verbose=args.verbose)
    if not args.no_layout:
        metrics["layout"] = _layout(ground_truth, predicted, args)
    return metrics, ground_truth, predicted, image_dir


def _layout(ground_truth: dict, predicted: Dict[Any, Any], args: argparse.Namespace) -> dict:
    """The layout block of predicted regions against the ground truth's."""
    classes = [category["name"] for category in ground_truth["categories"]]
    layout = layout_metrics(truth_from_coco(ground_truth), predicted, classes,
                            match_iou=args.match_iou)
    layout["score_thresh"] = args.score_thresh
    return layout


def _prediction_pages(files: Sequence[Path], truth_stems: Sequence[str]
                      ) -> Tuple[Dict[str, Tuple[Page, Path]], List[str]]:
    """--lines: the prediction files read and keyed by the ground-truth stem they belong
    to (their own stem, else their image's), and the names of those that belong to none."""
    wanted, paired, unpaired = set(truth_stems), {}, []
    for file in files:
        page = read_layout(file)
        image_stem = Path(page.image_filename.replace("\\", "/")).stem
        stem = file.stem if file.stem in wanted else image_stem if image_stem in wanted else None
        if stem is None:
            unpaired.append(file.name)
        elif stem in paired:
            raise InputError(f"two predictions of the ground-truth page {stem!r}: this file "
                             f"and {paired[stem][1]}", file)
        else:
            paired[stem] = (page, file)
    return paired, unpaired


def _score_lines(args: argparse.Namespace) -> Tuple[dict, List[str]]:
    """--lines mode: ({"lines": block}, names of the prediction files of no page)."""
    folder = Path(args.data) / args.split
    if not folder.is_dir():
        raise InputError("no such dataset folder", folder)
    truth_files = collect_layout_files([folder])
    predictions, unpaired = _prediction_pages(collect_layout_files([Path(args.predictions)]),
                                              [file.stem for file in truth_files])
    pages = []
    for file in truth_files:
        truth = read_layout(file)
        predicted, predicted_file = predictions.get(file.stem, (None, None))
        if predicted is not None and (predicted.width, predicted.height) != (truth.width,
                                                                            truth.height):
            raise InputError(f"page size {predicted.width}x{predicted.height} differs from "
                             f"the ground truth's {truth.width}x{truth.height} ({file}); "
                             "predict on the ground truth's images", predicted_file)
        pages.append((file.stem, truth, predicted))
    block = line_metrics(pages, tolerance=args.tolerance, match_iou=args.match_iou)
    return {"lines": block}, unpaired


def _report_lines(metrics: dict, unpaired: Sequence[str], args: argparse.Namespace) -> None:
    """Print the --lines figures and say which pages had no prediction and which
    predictions no page."""
    block = metrics["lines"]
    print(format_line_tables(block))
    missing = block["missing_predictions"]
    if missing:
        print(f"{len(missing)} of {block['page_count']} pages have no prediction (all their "
              f"lines count as missed): {', '.join(missing)}")
    if unpaired:
        print(f"{len(unpaired)} prediction files pair with no ground-truth page (left out): "
              f"{', '.join(unpaired)}")
    if args.table:
        form = "csv" if Path(args.table).suffix.lower() == ".csv" else "markdown"
        write_bytes_atomic(args.table, page_table(block, form).encode("utf-8"))
        print(f"wrote the per-page table to {args.table}")


def _score_checkpoint(args: argparse.Namespace) -> Tuple[dict, dict, Dict[Any, Any], Path]:
    """CHECKPOINT mode: (metrics, ground truth, image id -> predicted regions, images)."""
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.checkpoint, device)
    if args.box_score_thresh is not None:
        model.roi_heads.score_thresh = args.box_score_thresh
    dataset = _dataset(args, checkpoint)
    settings = EvalSettings(batch_size=args.batch_size, device=device,
                            num_workers=args.workers, classes=list(checkpoint["classes"]),
                            verbose=args.verbose, match_iou=args.match_iou,
                            score_thresh=args.score_thresh)
    results = predict_coco_results(model, dataset, settings)
    if args.save_results:
        write_json_atomic(args.save_results, results)
    names = ["coco", *([] if args.no_layout else ["layout"]),
             *(["proposals"] if args.proposal_recall else [])]
    metrics = run_evaluators(names, EvaluationInputs(model, dataset, results, settings))
    predicted: Dict[Any, Any] = {}
    if not args.no_layout and args.worst:
        predicted = predictions_from_results(results, dataset.coco, args.score_thresh)
    return metrics, dataset.coco, predicted, Path(dataset.image_dir)


def _worst_dir(args: argparse.Namespace) -> Path:
    if args.worst_dir:
        return Path(args.worst_dir)
    return (Path(args.out).parent if args.out else Path(".")) / "worst"


def _write_worst(args: argparse.Namespace, metrics: dict, ground_truth: dict,
                 predicted: Dict[Any, Any], image_dir: Path) -> None:
    """Side-by-side overlays (truth left, prediction right) of the --worst pages."""
    truth = truth_from_coco(ground_truth)
    files = {image["id"]: image["file_name"] for image in ground_truth["images"]}
    classes = [category["name"] for category in ground_truth["categories"]]
    folder = _worst_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    for rank, page in enumerate(worst_pages(metrics["layout"], args.worst), 1):
        key = page["image_id"]
        empty = PageRegions(truth[key].height, truth[key].width)
        out = folder / f"{rank:03d}_{Path(files[key]).stem}.jpg"
        save_side_by_side(image_dir / files[key], truth[key], predicted.get(key, empty),
                          classes, out)
    print(f"wrote {min(args.worst, len(truth))} overlays (truth left, prediction right) "
          f"to {folder}")


def _check_line_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.lines:
        if args.tolerance is not None or args.table:
            parser.error("--tolerance and --table go with --lines")
        return
    if args.predictions is None or not args.data:
        parser.error("--lines scores PAGE/ALTO predictions against PAGE/ALTO ground truth: "
                     "give --predictions DIR and --data DIR")
    if (args.checkpoint or args.ann or args.images or args.save_results or args.worst
            or args.box_score_thresh is not None or args.proposal_recall or args.no_layout):
        parser.error("--lines takes no CHECKPOINT, --ann, --images, --save-results, --worst, "
                     "--box-score-thresh, --proposal-recall or --no-layout")


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _check_line_arguments(parser, args)
    if args.predictions is not None:
        if (args.checkpoint or args.save_results or args.box_score_thresh is not None
                or args.proposal_recall or args.min_region_size is not None):
            parser.error("--predictions scores saved predictions against --ann or --data; it "
                         "takes no CHECKPOINT, --save-results, --box-score-thresh, "
                         "--proposal-recall or --min-region-size")
        if bool(args.ann) == bool(args.data):
            parser.error("--predictions needs the ground truth: --ann GT.json or --data DIR")
        if args.images and not args.ann:
            parser.error("--images goes with --ann")
    else:
        if not args.checkpoint:
            parser.error("give a CHECKPOINT, or --predictions PATH with --ann GT.json or "
                         "--data DIR")
        if args.data and (args.ann or args.images):
            parser.error("give either --data or --ann with --images, not both")
        if bool(args.ann) != bool(args.images):
            parser.error("--ann and --images go together (or use --predictions with --ann)")
        if args.workers < 0:
            parser.error("--workers must be >= 0")
    if args.worst and args.no_layout:
        parser.error("--worst needs the layout metrics (drop --no-layout)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    if args.data:  # a ZIP of a dataset folder: its extracted folder
        args.data = str(data_folder(args.data))
    for output in (args.out, args.save_results, args.table):
        _check_writable(output)
    if args.worst:
        _check_folder_writable(_worst_dir(args))
    if args.lines:
        metrics, unpaired = _score_lines(args)
        _report_lines(metrics, unpaired, args)
        if args.out:
            write_json_atomic(args.out, metrics)
        return 0
    if args.predictions is not None:
        metrics, ground_truth, predicted, image_dir = _score_predictions(args)
    else:
        metrics, ground_truth, predicted, image_dir = _score_checkpoint(args)
    print(format_table({k: v for k, v in metrics.items() if k in ("bbox", "segm")}))
    if "layout" in metrics:
        print()
        print(format_layout_tables(metrics["layout"], worst=max(args.worst, 5)))
    if "proposals" in metrics:
        print()
        print(format_recall_table(metrics["proposals"]))
    if args.worst:
        _write_worst(args, metrics, ground_truth, predicted, image_dir)
    if args.out:
        write_json_atomic(args.out, metrics)
    return 0


if __name__ == "__main__":
    run_main(main)
