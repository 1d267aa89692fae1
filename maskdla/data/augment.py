"""The one registry of training augmentations: what the train command line, the
TrainConfig's checks and the training Dataset build from.

Each row of :data:`AUGMENTATIONS` is one setting: its name (the TrainConfig field, the
field of :class:`AugmentSettings`, and the flag ``--NAME`` of ``maskdla train`` with
dashes), its default (off), its check, its description (the flag's help) and the
``torchvision.transforms.v2`` transform it adds to the training view when it is on. The
transforms run in the table's order on the page (``tv_tensors.Image``), its boxes
(``BoundingBoxes``, XYXY) and its masks (``Mask``) together; each draws its random numbers
from torch's global generator, and only when it is on (hflip one number, then
brightness_contrast two), so that a seeded run draws the same numbers as before.

To add an augmentation, edit here: its row of :data:`AUGMENTATIONS`, and the TrainConfig
field of its name (``NAME: type = AUGMENTATIONS["NAME"].default``, which keeps the
config.json of older runs loading); the train flag, the checks (TrainConfig's naming the
flag, AugmentSettings' naming the setting), the settings of the training view
(:func:`settings_of`) and the Dataset's transforms (:func:`build_transforms`) follow.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from maskdla.cli import fraction
from maskdla.errors import InputError

__all__ = ["Augmentation", "AUGMENTATIONS", "AugmentSettings", "BrightnessContrast",
           "apply_transforms", "build_transforms", "check_settings", "settings_of"]

Target = Dict[str, torch.Tensor]


class BrightnessContrast(v2.Transform):
    """Random contrast about the page's mean, then random brightness, factors drawn in
    [1 - strength, 1 + strength]; the image only (boxes and masks pass through).

    torchvision's ``ColorJitter`` is not this: it blends brightness with black and contrast
    with the grey mean, in a random order, with other draws. This keeps the formula and the
    draws (``torch.rand(2)``: brightness, contrast) runs were trained with.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, strength: float):
        super().__init__()
        self.strength = float(strength)

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        brightness, contrast = (1 + (torch.rand(2) * 2 - 1) * self.strength).tolist()
        return {"brightness": brightness, "contrast": contrast}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        image = inpt.as_subclass(torch.Tensor)
        mean = image.mean()
        image = ((image - mean) * params["contrast"] + mean).mul_(params["brightness"]).clamp_(0, 1)
        return tv_tensors.wrap(image, like=inpt)

    # torchvision < 0.21 calls these by their old, private names
    _get_params = make_params
    _transform = transform


def _switch_problem(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "must be true or false"


def _fraction_problem(value: Any) -> Optional[str]:
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    return None if number and 0 <= value < 1 else "must be in [0, 1)"  # refuses NaN too


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One training augmentation.

    Attributes:
        name: the setting: the TrainConfig field, the :class:`AugmentSettings` field, the
            flag ``--NAME`` (underscores as dashes).
        default: its value when not given, which is off.
        help: what it does (the flag's help, after "augmentation: ").
        build: value -> the v2 transform it adds when on (its value not the default).
        problem: value -> what is wrong with it, as "must be ..." (None: nothing).
        parse: the flag's argparse type (``--NAME X``); None: a switch (``--NAME``, off by
            default).
    """

    name: str
    default: Any
    help: str
    build: Callable[[Any], v2.Transform]
    problem: Callable[[Any], Optional[str]]
    parse: Optional[Callable[[str], Any]] = None

    def __post_init__(self) -> None:
        if self.parse is None and self.default is not False:
            raise ValueError(f"augmentation {self.name}: a switch (no parse) is off by default")

    @property
    def flag(self) -> str:
        """``--NAME`` of ``maskdla train``."""
        return "--" + self.name.replace("_", "-")

    def is_on(self, value: Any) -> bool:
        return value != self.default


#: name -> augmentation, in the order the transforms run and draw their random numbers
AUGMENTATIONS: Dict[str, Augmentation] = {row.name: row for row in (
    Augmentation("hflip", False,
                 "random horizontal flip of the page with its boxes and masks (probability "
                 "0.5); off by default: page layout is not mirror-symmetric (drop capitals "
                 "sit left of their staff, margins and numbering differ by side)",
                 build=lambda on: v2.RandomHorizontalFlip(0.5), problem=_switch_problem),
    Augmentation("brightness_contrast", 0.0,
                 "random brightness and contrast factors in [1 - x, 1 + x] (0: off)",
                 build=BrightnessContrast, problem=_fraction_problem, parse=fraction),
)}


def check_settings(values: Any, flags: bool = False) -> None:
    """Check each row's setting in ``values`` (anything with the rows' names as
    attributes: a TrainConfig, AugmentSettings).

    Raises:
        InputError: a bad value, naming the flag (``flags``) or the setting.
    """
    for row in AUGMENTATIONS.values():
        value = getattr(values, row.name)
        problem = row.problem(value)
        if problem:
            raise InputError(f"{row.flag if flags else row.name} {problem}, got {value!r}")


def _settings_post_init(self: Any) -> None:
    check_settings(self)


#: the settings of every row (a frozen dataclass, a field per row with the row's default):
#: ``View.augment`` of the training Dataset. Checked when made: InputError naming the setting.
AugmentSettings = dataclasses.make_dataclass(
    "AugmentSettings",
    [(row.name, type(row.default), dataclasses.field(default=row.default))
     for row in AUGMENTATIONS.values()],
    frozen=True,
    namespace={"__post_init__": _settings_post_init,
               "__doc__": "The value of every augmentation of AUGMENTATIONS (default: off)."})
AugmentSettings.__module__ = __name__  # make_dataclass's module= needs Python 3.12


def settings_of(values: Any) -> "AugmentSettings":
    """The augmentation settings of a TrainConfig (or of anything with the rows' names as
    attributes)."""
    return AugmentSettings(**{name: getattr(values, name) for name in AUGMENTATIONS})


def build_transforms(settings: Any) -> List[v2.Transform]:
    """The training transforms of the rows that ``settings`` (AugmentSettings, a
    TrainConfig) switch on, in the table's order."""
    transforms = []
    for row in AUGMENTATIONS.values():
        value = getattr(settings, row.name)
        if row.is_on(value):
            transforms.append(row.build(value))
    return transforms


def apply_transforms(transforms: Sequence[v2.Transform], image: torch.Tensor,
                     target: Target) -> Tuple[torch.Tensor, Target]:
    """``transforms`` on a Dataset item: the image (float [3, h, w]), its target's
    ``boxes`` (XYXY) and ``masks`` as tv_tensors, the rest passed through; plain tensors
    come back."""
    if not transforms:
        return image, target
    height, width = image.shape[-2:]
    sample: Any = (tv_tensors.Image(image), dict(
        target, boxes=tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                               canvas_size=(height, width)),
        masks=tv_tensors.Mask(target["masks"])))
    for transform in transforms:
        sample = transform(sample)
    image, target = sample
    return image.as_subclass(torch.Tensor), {
        key: value.as_subclass(torch.Tensor) if isinstance(value, tv_tensors.TVTensor) else value
        for key, value in target.items()}
