"""The command line of ``python -m maskdla.train``: a flag per :class:`TrainConfig` field.

:func:`config_from_argv` turns ``argv`` (``--config FILE`` and flags over it) into the
run's validated TrainConfig; :func:`maskdla.train.main` trains it. To add a flag, add the
field to :class:`maskdla.config.TrainConfig` (its default and validation live there) and
its ``add(...)`` line to the group it belongs in here; an augmentation's flag comes from
its row of :data:`maskdla.data.augment.AUGMENTATIONS`.
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from maskdla.backbones import BACKBONES, NORMS
from maskdla.cli import fraction as _fraction, non_negative_float, positive_int
from maskdla.config import (AMP_MODES, ANCHOR_SCALES, LOADER_PASSES, LR_REFERENCE_BATCH,
                            MASK_RESOLUTIONS, RESUME_AUTO, TASKS, TrainConfig)
from maskdla.data.augment import AUGMENTATIONS
from maskdla.data.pagexml import parse_class_map
from maskdla.schedule import LR_STEP_PRESETS, SHORT_RUN_WARMUP

__all__ = ["build_parser", "config_from_argv", "config_from_args"]

#: --help's first line (the training module's summary)
DESCRIPTION = ("Training: an epoch-native, distributed, resumable loop behind "
               "``python -m maskdla.train``.")


def _min_sizes(text: str) -> List[int]:
    """``--min-size 800`` or ``640,672,704`` -> the sizes; ArgumentTypeError otherwise."""
    try:
        sizes = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 800 or 640,672,704, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _ratios(text: str) -> List[float]:
    """``--anchor-ratios 0.25,0.5,1,2`` -> the ratios; ArgumentTypeError otherwise."""
    try:
        ratios = [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.25,0.5,1,2, got {text!r}") from None
    if not ratios or min(ratios) <= 0:
        raise argparse.ArgumentTypeError(f"ratios must be positive, got {text!r}")
    return ratios


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m maskdla.train``: a flag per TrainConfig field, its
    default the field's, in four groups."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.train", description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="a saved TrainConfig (.json or "
                        ".toml); flags given next to it override its settings")
    _data_flags(parser.add_argument_group(
        "data (no --data and no --train-ann: the embedded synthetic corpus)"), defaults)
    _model_flags(parser.add_argument_group("model"), defaults)
    _optimisation_flags(parser.add_argument_group("optimisation"), defaults)
    _run_flags(parser.add_argument_group("run folder, evaluation, devices"), defaults)
    return parser


def _data_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--task", choices=TASKS, default=defaults.task,
        help="what the model finds: regions (default: the layout's zones) or lines (the "
             "TextLine elements of PAGE/ALTO, classed by line type: a line model)")
    add("--data", help="dataset folder: DATA/train/*.jpg with its PAGE or ALTO files in "
        "DATA/train/page/, DATA/train/alto/ or next to the images; same for test/ (and val/: "
        "the validation split)")
    add("--train-ann", help="COCO JSON of the training split")
    add("--train-images", help="image folder of --train-ann (default: its folder)")
    add("--test-ann", help="COCO JSON of the test split")
    add("--test-images", help="image folder of --test-ann (default: its folder)")
    add("--val-fraction", type=_fraction, default=defaults.val_fraction,
        help="validation split: this fraction of the train pages, drawn by --seed (0: "
             "DATA/val/ when present, else evaluations during training use the test split)")
    add("--test-fraction", type=_fraction, default=defaults.test_fraction,
        help="a --data folder without train/ and test/ (an eScriptorium export: the XML "
             "beside its images): this fraction of its pages, drawn by --seed, is the test "
             "split, the rest the train split")
    add("--classes", nargs="+", help="class names in label order (default: sorted names found)")
    add("--class-map", nargs="+", default=[], metavar="OLD=NEW",
        help="rename or merge classes (paragraph=text); OLD= drops a class, *= drops every "
             "class not named")
    add("--fold-subtypes", action="store_true",
        help="fold SegmOnto sub-types to their main type (MainZone#1 -> MainZone) before the "
             "class map")
    add("--synthetic-pages", type=positive_int, default=defaults.synthetic_pages,
        help="synthetic corpus: pages in all")
    add("--synthetic-train", type=positive_int, default=defaults.synthetic_train,
        help="synthetic corpus: pages in the train split (the rest is test)")
    add("--synthetic-width", type=positive_int, default=defaults.synthetic_width,
        help="synthetic corpus: page width in pixels")
    add("--min-size", type=_min_sizes, default=defaults.min_size,
        help="short side at training; several (640,672,704) pick one per image; test uses the last")
    add("--max-size", type=positive_int, default=defaults.max_size, help="cap on the long side")
    for row in AUGMENTATIONS.values():  # a flag per row of maskdla/data/augment.py
        if row.parse is None:  # a switch, off by default
            add(row.flag, action="store_true", help=f"augmentation: {row.help}")
        else:
            add(row.flag, type=row.parse, default=getattr(defaults, row.name),
                help=f"augmentation: {row.help}")
    add("--min-region-size", type=non_negative_float, default=defaults.min_region_size,
        metavar="PX", help="regions under PX pixels (sqrt(w x h) at the test size) are specks: "
        "left out of the training targets, ignored (COCO iscrowd) by evaluation (0: none)")
    add("--repeat-threshold", type=non_negative_float, default=defaults.repeat_threshold,
        help="class-balanced sampling: pages with a class on fewer than this fraction of the "
             "training pages are repeated (LVIS repeat factors; 0: uniform, the default)")
    add("--workers", type=int, default=defaults.workers, help="data loader worker processes per process")
    add("--cache-images", action="store_true",
        help="keep decoded training images in memory after the first epoch (faster loading, ~3 MB/page/worker)")
    add("--loader-pass", choices=LOADER_PASSES, default=defaults.loader_pass,
        help="epoch (default): a new pass over the data loader each epoch; run: one pass for "
             "the whole run, so prefetching goes on through epoch ends (less data wait where "
             "the workers have cores of their own)")


def _model_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--backbone", default=defaults.backbone, help=f"one of: {', '.join(sorted(BACKBONES))}")
    add("--norm", choices=NORMS, help="normalisation (default: frozenbn with --pretrained, else gn)")
    add("--pretrained", help="state dict file for the backbone body, or 'imagenet' (resnet50/101; downloads)")
    add("--init-from", metavar="CHECKPOINT", help="start a new run (new schedule and optimizer) "
        "from a trained maskdla model: every weight whose shape fits is kept, the class layers "
        "are rebuilt for other classes, keeping the rows of classes shared by name")
    add("--freeze-at", type=int, default=defaults.freeze_at, help="leading stages frozen (stem = 1)")
    add("--fpn-channels", type=positive_int, help="FPN width (default 256; 128 for vovnet19lite/slim)")
    add("--anchor-ratios", type=_ratios, default=defaults.anchor_ratios,
        help="RPN anchor aspect ratios height/width, e.g. 0.1,0.25,0.5,1,2 for wide text lines "
             "(default 0.5,1,2 as in the study)")
    add("--anchor-scales", type=int, choices=ANCHOR_SCALES, default=defaults.anchor_scales,
        help="anchor sizes per FPN level, spread over an octave: 1 = torchvision's (32, 64, "
             "..., 512), 3 = RetinaNet's (32, 40, 51 at the first level), for regions whose "
             "size falls between two levels (drop capitals, numbering)")
    add("--mask-resolution", type=int, choices=MASK_RESOLUTIONS, default=defaults.mask_resolution,
        help="side of the predicted masks: 28 (torchvision's) or 56 (finer along the short "
             "side of long thin regions: lyrics lines, running titles, margin notes)")
    add("--rois-per-image", type=positive_int, default=defaults.rois_per_image,
        help="RoIs sampled per image for the box head's loss (fewer: faster CPU steps)")
    add("--detections-per-image", type=positive_int, default=defaults.detections_per_image,
        help="at most this many detections per image at test time (a line model: 300)")


def _optimisation_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--epochs", type=float, default=defaults.epochs, help="epochs to train (fractions allowed)")
    add("--batch-size", type=positive_int, default=defaults.batch_size, help="images per process and iteration")
    add("--lr", type=float, default=defaults.lr,
        help=f"base learning rate; 0.02 is the study's for a total batch of {LR_REFERENCE_BATCH}")
    add("--scale-lr", action="store_true",
        help=f"scale --lr linearly by total batch / {LR_REFERENCE_BATCH} (batch x processes)")
    add("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    add("--weight-decay", type=float, default=defaults.weight_decay, help="SGD weight decay")
    add("--lr-steps", default=defaults.lr_steps,
        help=f"LR milestones: a preset ({', '.join(f'{k}={v[0]:.3g},{v[1]:.3g}' for k, v in LR_STEP_PRESETS.items())} "
             "of training), explicit epochs '300,400', fractions '0.4,0.7', or 'none'")
    add("--gamma", type=float, default=defaults.gamma, help="LR factor at each milestone")
    add("--warmup-iters", type=int, default=defaults.warmup_iters,
        help=f"linear warmup iterations: at most a tenth of the run, but at least "
             f"{SHORT_RUN_WARMUP} (or half of a shorter run)")
    add("--clip-grad-norm", type=non_negative_float, default=defaults.clip_grad_norm,
        help="clip the gradients' global L2 norm to this (0: off)")
    add("--nonfinite-limit", type=positive_int, default=defaults.nonfinite_limit,
        help="steps with a NaN/inf loss are skipped; this many in a row stop the run")
    add("--amp", choices=AMP_MODES, help="mixed precision (default: bf16 on CUDA where supported, else off)")
    add("--seed", type=int, default=defaults.seed, help="random seed")
    add("--deterministic", action="store_true", help="deterministic algorithms (resumed runs end with identical weights on CPU)")


def _run_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--out", help="run folder (default runs/BACKBONE-EPOCHSep)")
    add("--resume", nargs="?", const=RESUME_AUTO, help="resume from PATH, or 'auto': the run folder's checkpoint_last.pth")
    add("--checkpoint-every", type=non_negative_float, default=defaults.checkpoint_every,
        help="epochs between checkpoint_last.pth saves (0: only at the end)")
    add("--eval-every", type=non_negative_float, default=defaults.eval_every,
        help="epochs between evaluations on the validation split (else the test split), "
             "which keep checkpoint_best.pth (0: only the final test evaluation)")
    add("--best-metric", default=defaults.best_metric,
        help="what checkpoint_best.pth maximises: a dotted path into metrics.json "
             "(segm.AP, segm.AP50, bbox.AP, segm.per_class.NAME, ...)")
    add("--patience", type=int, default=defaults.patience,
        help="stop after this many evaluations without a better --best-metric (0: never)")
    add("--log-every", type=positive_int, default=defaults.log_every, help="iterations between log.jsonl lines")
    add("--tensorboard", action="store_true",
        help="also write TensorBoard event files to RUN/tensorboard (the 'tensorboard' extra)")
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add("--no-energy", dest="energy", action="store_false", help="do not run the energy meter")
    add("--energy-interval", type=float, default=defaults.energy_interval, help="seconds between energy samples")
    add("--price-per-kwh", type=non_negative_float, default=defaults.price_per_kwh, help="electricity price for the cost")
    add("--cpu-watts-per-core", type=float, default=defaults.cpu_watts_per_core,
        help="watts one busy core draws, for the CPU energy estimate where RAPL is unreadable "
             "(an estimate, marked so; default: Green Algorithms' per-core TDP, docs/energy.md)")
    add("--currency", default=defaults.currency, help="currency of --price-per-kwh")


def config_from_argv(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The run's TrainConfig from the command line: ``--config FILE`` (if given) for the
    settings, the flags given next to it over them; validated."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        saved = TrainConfig.load(known.config).to_dict()
        saved["class_map"] = [f"{old}={new or ''}" for old, new in (saved["class_map"] or {}).items()]
        parser.set_defaults(**saved)
    return config_from_args(parser.parse_args(argv))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags (``--config`` already applied), validated."""
    values = vars(args).copy()
    values.pop("config", None)
    values["class_map"] = parse_class_map(values.get("class_map") or []) or None
    return TrainConfig.from_dict(values)
