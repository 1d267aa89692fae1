"""``TrainConfig``: the one typed config of a training run, from the command line (or a
saved JSON/TOML file) to the checkpoint and back.

The defaults live here and only here; :meth:`TrainConfig.validate` checks every setting
once, at the edge (the CLI, :meth:`TrainConfig.from_dict`, :func:`maskdla.train.fit`).
A checkpoint stores :meth:`TrainConfig.to_dict` under ``"config"``; ``from_dict`` also
reads the configs of older checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from maskdla.backbones import NORMS, V1_ROWS, default_norm, resolve_name
from maskdla.data.augment import AUGMENTATIONS, check_settings
from maskdla.data.dataset import View
from maskdla.data.lines import INSTANCE_KINDS
from maskdla.errors import InputError
from maskdla.files import read_json, write_bytes_atomic
from maskdla.schedule import plan

PathLike = Union[str, "os.PathLike[str]"]  # noqa: F821 (a string annotation)

#: the total batch size the default LR (0.02) was tuned for in the study (450-epoch runs)
LR_REFERENCE_BATCH = 2
LOADER_PASSES = ("epoch", "run")
MASK_RESOLUTIONS = (28, 56)
#: anchor sizes per FPN level that --anchor-scales takes (1: torchvision's)
ANCHOR_SCALES = (1, 2, 3, 4)
#: --resume value: continue the run folder's own checkpoint_last.pth when there is one
RESUME_AUTO = "auto"
AMP_MODES = ("off", "fp16", "bf16")
#: what a model's instances are (--task): the layout regions, or the text lines of the
#: PAGE/ALTO TextLine elements
TASKS = INSTANCE_KINDS
#: what a run folder's config.json records next to the settings: facts of that run (how
#: many processes, how many training pages), read back by reports, never settings of a new run
RUN_FACTS = ("world_size", "train_size")
#: torchvision's (and detectron2's) RPN anchor aspect ratios, height / width
DEFAULT_ANCHOR_RATIOS = (0.5, 1.0, 2.0)


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint and in config.json.

    Field names are the CLI flags with underscores (``--lr-steps`` -> ``lr_steps``).
    """

    backbone: str = "resnet50"
    #: "regions" (layout regions) or "lines" (text lines: the line model)
    task: str = "regions"
    data: Optional[str] = None
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    test_ann: Optional[str] = None
    test_images: Optional[str] = None
    classes: Optional[List[str]] = None
    class_map: Optional[Dict[str, Optional[str]]] = None
    fold_subtypes: bool = False
    epochs: float = 450.0
    batch_size: int = 2
    lr: float = 0.02
    scale_lr: bool = False
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: str = "default"
    gamma: float = 0.1
    #: linear LR warmup; :func:`maskdla.schedule.warmup_iterations` fits it to short runs
    warmup_iters: int = 1000
    #: clip the gradients' global L2 norm to this (0: no clipping); chosen by measurement
    #: (docs/training.md, "Stability")
    clip_grad_norm: float = 10.0
    #: a step with a NaN/inf loss (or gradient) is skipped; this many in a row stop the run
    nonfinite_limit: int = 5
    #: the Dataset's defaults (maskdla.data.dataset.View): 800 and 1333, torchvision's
    min_size: List[int] = field(default_factory=lambda: list(View().min_sizes))
    max_size: int = View.max_size
    #: None: frozenbn with ``pretrained``, else gn (resolved when the run starts)
    norm: Optional[str] = None
    pretrained: Optional[str] = None
    #: a maskdla checkpoint a new run starts from (fine-tuning: new schedule and optimizer)
    init_from: Optional[str] = None
    freeze_at: int = 0
    #: None: the backbone's own width (256; 128 for vovnet19lite/slim)
    fpn_channels: Optional[int] = None
    #: RPN anchor aspect ratios (height / width) at every FPN level
    anchor_ratios: List[float] = field(default_factory=lambda: list(DEFAULT_ANCHOR_RATIOS))
    #: anchor sizes per FPN level, spread over the octave up to the next level's size:
    #: 1 = torchvision's one size (32, 64, ...), 3 = RetinaNet's 2^0, 2^(1/3), 2^(2/3)
    anchor_scales: int = 1
    #: RoIs sampled per image for the box head's loss (torchvision/detectron2 default 512);
    #: fewer make a CPU step several times cheaper
    rois_per_image: int = 512
    #: at most this many detections per image at test time (torchvision's 100; a line
    #: model needs more: the base corpus has pages of 240 lines)
    detections_per_image: int = 100
    #: side of the predicted instance masks: 28 (torchvision's) or 56 (finer masks for long,
    #: thin regions; RoIAlign of the mask head at 28 instead of 14)
    mask_resolution: int = 28
    #: training augmentations: a field per row of maskdla.data.augment.AUGMENTATIONS, its
    #: default the row's (off). Random horizontal flip (off: page layout is not
    #: mirror-symmetric)
    hflip: bool = AUGMENTATIONS["hflip"].default
    #: random brightness and contrast factors in [1 - x, 1 + x] (0: off)
    brightness_contrast: float = AUGMENTATIONS["brightness_contrast"].default
    #: class-balanced sampling: pages holding a class present on fewer than this fraction
    #: of the training pages are repeated (LVIS's repeat-factor sampling; 0: uniform)
    repeat_threshold: float = 0.0
    #: regions under this many pixels (sqrt(w x h) at the test size) are "specks": kept out
    #: of the training targets and ignored (COCO iscrowd) by the evaluation (0: none)
    min_region_size: float = View.min_region_size
    #: None: bf16 on CUDA cards that support it, else off
    amp: Optional[str] = None
    workers: int = 2
    #: keep decoded, resized training images in each loader worker's memory (decoding is
    #: most of a page's loading time; costs ~3 MB per page at 800 px per worker)
    cache_images: bool = View.cache
    #: "epoch": a new pass over the DataLoader each epoch (its prefetch queue drains at each
    #: epoch's end); "run": one pass over the rest of the run (see
    #: maskdla.data.samplers.EpochBatches). On the 2-core CPU "run" halves the data wait but
    #: is 6 % slower: the workers then load while the main process computes, instead of
    #: while it waits (docs/benchmarks.md)
    loader_pass: str = "epoch"
    seed: int = 0
    deterministic: bool = False
    out: Optional[str] = None
    resume: Optional[str] = None
    checkpoint_every: float = 5.0
    eval_every: float = 0.0
    #: the metric (a dotted path into metrics.json) that picks checkpoint_best.pth
    best_metric: str = "segm.AP"
    #: stop after this many evaluations without a better best_metric (0: never)
    patience: int = 0
    #: validation split taken from train by seed (0: DATA/val/ when present, else none)
    val_fraction: float = 0.0
    #: a data folder without train/ and test/ (an eScriptorium export): this fraction of
    #: its pages, drawn by seed, is the test split and the rest the train split
    test_fraction: float = 0.1
    #: write TensorBoard event files under the run folder (the ``tensorboard`` extra)
    tensorboard: bool = False
    log_every: int = 20
    device: Optional[str] = None
    energy: bool = True
    energy_interval: float = 1.0
    price_per_kwh: float = 0.246
    currency: str = "EUR"
    #: watts one busy core draws, for the CPU energy estimate where RAPL is unreadable:
    #: the Green Algorithms calculator's per-core TDP for an unknown CPU (docs/energy.md)
    cpu_watts_per_core: float = 12.0
    synthetic_pages: int = 228
    synthetic_train: int = 128
    synthetic_width: int = 1000
    #: stop, as if interrupted, after this many iterations (time-boxed jobs, tests);
    #: the run stays resumable. Not part of the schedule.
    stop_after_iterations: Optional[int] = None

    # ------------------------------------------------------------------ plain data

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types (lists, dicts, str, numbers, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """From a plain dict (a checkpoint's, config.json's, an experiment file's), validated.

        Unknown keys are an error naming them and the valid fields. Configs of older
        checkpoints load too: ``vovnet_version: 1`` becomes the backbone's V1 row
        (``vovnet39`` -> ``vovnet39v1``), and ``None`` for a setting that has a default
        now (``min_size``, ``max_size``, ``anchor_ratios``) takes that default.
        """
        values = _upgrade(dict(values))
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(names))}")
        if isinstance(values.get("class_map"), dict):
            values["class_map"] = {old: new or None for old, new in values["class_map"].items()}
        return cls(**values).validate()

    @classmethod
    def load(cls, path: PathLike) -> "TrainConfig":
        """A config saved as JSON (``.json``) or TOML (``.toml``); InputError naming the
        file when it cannot be read or holds a bad setting."""
        path = Path(path)
        if path.suffix.lower() == ".toml":
            values = _read_toml(path)
        else:
            values = read_json(path, "training config")
        if not isinstance(values, dict):
            raise InputError("a training config must be a JSON object / TOML table", path)
        values = {key: value for key, value in values.items() if key not in RUN_FACTS}
        try:
            return cls.from_dict(values)
        except InputError as error:
            raise InputError(str(error), path) from None

    def save(self, path: PathLike) -> None:
        """Write the config atomically, as TOML when ``path`` ends in ``.toml``, else JSON."""
        path = Path(path)
        if path.suffix.lower() == ".toml":
            write_bytes_atomic(path, _toml_text(self.to_dict()).encode("utf-8"))
        else:
            write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))

    # ------------------------------------------------------------------ checks

    def validate(self) -> "TrainConfig":
        """Check what a flag parser cannot; InputError naming the flag. Returns self."""
        try:
            resolve_name(self.backbone)
        except ValueError as error:
            raise InputError(f"--backbone: {error}") from None
        if self.norm is not None and self.norm not in NORMS:
            raise InputError(f"--norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.init_from and self.pretrained:
            raise InputError("--init-from starts from a whole trained model; drop --pretrained "
                             "(backbone weights) or --init-from")
        # --resume auto stays allowed: an experiment's run (or a requeued job) starts from
        # --init-from the first time and continues from its own checkpoint_last.pth after.
        if self.init_from and self.resume not in (None, RESUME_AUTO):
            raise InputError("--init-from starts a new run and --resume PATH continues one: "
                             "give one (--resume auto continues a fine-tuning run)")
        if self.task not in TASKS:
            raise InputError(f"--task {self.task!r}: choose one of {', '.join(TASKS)}")
        if self.detections_per_image < 1:
            raise InputError(f"--detections-per-image must be >= 1, got {self.detections_per_image!r}")
        if self.amp is not None and self.amp not in AMP_MODES:
            raise InputError(f"--amp {self.amp!r}: choose off, fp16 or bf16")
        if not self.epochs > 0 or not math.isfinite(self.epochs):
            raise InputError(f"--epochs must be a positive number, got {self.epochs!r}")
        if self.batch_size < 1 or self.max_size < 1 or not self.min_size or min(self.min_size) < 1:
            raise InputError("--batch-size, --min-size and --max-size must be positive")
        if not self.anchor_ratios or min(self.anchor_ratios) <= 0:
            raise InputError(f"--anchor-ratios must be positive, got {self.anchor_ratios!r}")
        if self.anchor_scales not in ANCHOR_SCALES:
            raise InputError(f"--anchor-scales must be one of {', '.join(map(str, ANCHOR_SCALES))}, "
                             f"got {self.anchor_scales!r}")
        self._validate_optimizer()
        if max(self.min_size) > self.max_size:
            # training_size caps the long side at max_size first: every page would train
            # (and predict) below the min_size asked for
            raise InputError(f"--max-size {self.max_size} is below --min-size "
                             f"{max(self.min_size)}: the long side is capped at --max-size, so "
                             "pages would never reach the short side asked for; give a "
                             "--max-size of at least the largest --min-size")
        if self.data and (self.train_ann or self.test_ann):
            raise InputError("give either --data or --train-ann/--test-ann, not both")
        if bool(self.train_ann) != bool(self.test_ann):
            raise InputError("--train-ann and --test-ann go together")
        if self.loader_pass not in LOADER_PASSES:
            raise InputError(f"--loader-pass {self.loader_pass!r}: choose one of "
                             f"{', '.join(LOADER_PASSES)}")
        if not 0 <= self.freeze_at <= 5:
            raise InputError(f"--freeze-at must be between 0 and 5, got {self.freeze_at}")
        if self.workers < 0 or self.warmup_iters < 0 or self.patience < 0:
            raise InputError("--workers, --warmup-iters and --patience must be 0 or more")
        self._validate_stability_and_selection()
        watts = self.cpu_watts_per_core
        if (isinstance(watts, bool) or not isinstance(watts, (int, float))
                or not (watts > 0 and math.isfinite(watts))):
            raise InputError(f"--cpu-watts-per-core must be a finite number > 0, got {watts!r}")
        try:
            plan(self.epochs, 1, 1, 1, self.lr_steps)
        except ValueError as error:
            raise InputError(str(error)) from None
        return self

    def _validate_optimizer(self) -> None:
        """The SGD settings: NaN slips through ``<`` comparisons, inf trains to NaN."""
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:  # also refuses NaN
            raise InputError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not 0 < self.gamma <= 1:
            raise InputError(f"--gamma (the LR factor at each step) must be in (0, 1], "
                             f"got {self.gamma!r}")

    def _validate_stability_and_selection(self) -> None:
        if not (self.clip_grad_norm >= 0 and math.isfinite(self.clip_grad_norm)):
            raise InputError(f"--clip-grad-norm must be 0 (off) or positive, got {self.clip_grad_norm!r}")
        if self.nonfinite_limit < 1:
            raise InputError(f"--nonfinite-limit must be at least 1, got {self.nonfinite_limit}")
        if self.mask_resolution not in MASK_RESOLUTIONS:
            raise InputError(f"--mask-resolution {self.mask_resolution}: choose "
                             f"{' or '.join(map(str, MASK_RESOLUTIONS))}")
        if self.min_region_size < 0:
            raise InputError(f"--min-region-size must be >= 0, got {self.min_region_size!r}")
        if not 0 <= self.repeat_threshold <= 1:
            raise InputError(f"--repeat-threshold must be in [0, 1], got {self.repeat_threshold!r}")
        check_settings(self, flags=True)  # the augmentations (maskdla.data.augment)
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction!r}")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"--test-fraction must be in (0, 1), got {self.test_fraction!r}")
        if not all(self.best_metric.split(".")):
            raise InputError(f"--best-metric {self.best_metric!r}: expected a dotted path into "
                             "metrics.json such as segm.AP, segm.AP50 or bbox.AP")
        if self.patience and not self.eval_every:
            raise InputError("--patience counts evaluations: give --eval-every too")

    # ------------------------------------------------------------------ derived values

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{resolve_name(self.backbone)}-{self.epochs:g}ep")

    @property
    def resolved_norm(self) -> str:
        """``norm``, or its default: frozenbn with ``pretrained``, else gn."""
        return self.norm or default_norm(self.pretrained)

    @property
    def test_min_size(self) -> int:
        """The short side at test time: torchvision tests at the last training min_size."""
        return self.min_size[-1]


def _upgrade(values: Dict[str, Any]) -> Dict[str, Any]:
    """An older checkpoint's config in today's fields (see :meth:`TrainConfig.from_dict`)."""
    version = values.pop("vovnet_version", None)
    if version not in (None, 2):
        backbone = str(values.get("backbone", TrainConfig.backbone))
        if version != 1 or backbone not in V1_ROWS:
            raise InputError(f"vovnet_version {version!r} with backbone {backbone!r}: only the "
                             f"VoVNet backbones have a version 1 ({', '.join(V1_ROWS)})")
        values["backbone"] = V1_ROWS[backbone]
    for item in dataclasses.fields(TrainConfig):
        has_default = item.default is not None or item.default_factory is not dataclasses.MISSING
        if item.name in values and values[item.name] is None and has_default:
            del values[item.name]
    return values


def _read_toml(path: Path) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - setup.cfg installs tomli there
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise InputError("training config not found", path) from None
    except OSError as error:
        raise InputError(f"cannot read training config: {error.strerror or error}", path) from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"not valid TOML ({error})", path) from None


def _toml_text(values: Dict[str, Any]) -> str:
    """``values`` as TOML: TOML has no null, so None settings are left out (they take their
    default when read back); ``class_map`` is a table, a dropped class maps to ""."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()
             if value is not None and not isinstance(value, dict)]
    for key, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"]
            lines += [f"{json.dumps(old)} = {json.dumps(new or '')}" for old, new in table.items()]
    return "\n".join(lines) + "\n"
