"""``build_model``: a torchvision Mask R-CNN on one of maskdla's backbones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from maskdla.backbones import build_backbone
from maskdla.config import ANCHOR_SCALES, DEFAULT_ANCHOR_RATIOS, TrainConfig
from maskdla.data.resize import training_size

#: convs in torchvision's (and detectron2's) mask head
MASK_HEAD_CONVS = 4
#: torchvision's FPN anchor sizes, one per level (strides 4-64)
ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
#: torchvision's mask RoIAlign output (the predictor upsamples it 2x to 28 x 28 masks)
MASK_ROI_SIZE = 14
#: the FPN maps the RoI heads pool from (torchvision's MaskRCNN defaults)
FPN_LEVELS = ["0", "1", "2", "3"]
#: width of torchvision's two-layer box head (TwoMLPHead)
BOX_HEAD_REPRESENTATION = 1024


class PageTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, resize, batch) that does not resize a page the
    Dataset already delivered at one of the training sizes: resizing twice costs time and
    blurs thin strokes (staff lines are 1-3 px at 800 px)."""

    def resize(self, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None
               ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
        height, width = image.shape[-2:]
        for min_size in self.min_size:
            if training_size(height, width, min_size, self.max_size) == (height, width):
                return image, target
        return super().resize(image, target)


def anchor_sizes(scales: int) -> Tuple[Tuple[float, ...], ...]:
    """Anchor sizes (side of the square anchor, px) per FPN level, ``scales`` per level."""
    return tuple(tuple(round(level[0] * 2 ** (k / scales), 2) for k in range(scales))
                 for level in ANCHOR_SIZES)


@dataclass(frozen=True)
class Heads:
    """The shape of the heads :func:`build_model` puts on the backbone, each default
    TrainConfig's (the field of the same name there).

    Attributes:
        fpn_channels: the FPN's width (None: the backbone's own, 256; 128 for
            vovnet19lite/slim); see :func:`maskdla.backbones.build_backbone`.
        anchor_ratios: RPN anchor aspect ratios, height / width, at every FPN level
            (default 0.5, 1, 2 as in torchvision and detectron2, the study's setting). Page
            regions are often far wider than tall (a lyrics line is 20-40x wider than
            tall); ratios like 0.1 and 0.25 give the RPN anchors of that shape.
        anchor_scales: anchor sizes per FPN level: ``s * 2 ** (k / anchor_scales)`` for
            ``k < anchor_scales`` and the level's size ``s`` (32 ... 512). 1 is torchvision's;
            3 is RetinaNet's octave scales. A region of side 44 px has IoU 0.53 with a 32 px
            anchor and 0.47 with a 64 px one, so below the RPN's 0.7 for both; 3 scales give
            it a 40 px anchor (IoU 0.83).
        mask_resolution: side M of the predicted masks [N, 1, M, M]: 28 as torchvision
            (RoIAlign to 14 x 14, the predictor's transposed conv doubles it) or 56 (RoIAlign
            to 28 x 28) for long thin regions, whose 28-pixel mask rows are coarse along
            their short side. The weights are the same shapes either way.

    Raises:
        ValueError: an odd mask resolution, a ratio <= 0, an unknown number of scales.
    """

    fpn_channels: Optional[int] = TrainConfig.fpn_channels
    anchor_ratios: Tuple[float, ...] = DEFAULT_ANCHOR_RATIOS
    anchor_scales: int = TrainConfig.anchor_scales
    mask_resolution: int = TrainConfig.mask_resolution

    def __post_init__(self) -> None:
        ratios = tuple(float(ratio) for ratio in self.anchor_ratios)
        object.__setattr__(self, "anchor_ratios", ratios)
        if self.mask_resolution % 2 or self.mask_resolution < 2:
            raise ValueError(f"mask_resolution must be even and positive, got "
                             f"{self.mask_resolution}")
        if not ratios or min(ratios) <= 0:
            raise ValueError(f"anchor ratios must be positive, got {ratios!r}")
        if self.anchor_scales not in ANCHOR_SCALES:
            raise ValueError(f"anchor_scales must be one of {ANCHOR_SCALES}, got "
                             f"{self.anchor_scales!r}")


def build_model(backbone: str, num_classes: int, *, pretrained: Optional[str] = None,
                norm: Optional[str] = None, min_size: Union[int, Sequence[int]] = 800,
                max_size: int = 1333, freeze_at: int = 0, heads: Heads = Heads(),
                **maskrcnn_kwargs: Any) -> MaskRCNN:
    """A torchvision ``MaskRCNN`` on backbone ``backbone``.

    Args:
        backbone: a name of :data:`maskdla.backbones.BACKBONES` (ValueError otherwise).
        num_classes: classes including the background (3 region classes -> 4).
        pretrained, norm, freeze_at: see :func:`maskdla.backbones.build_backbone`.
        min_size: short side at training (several: one picked per image) and test time
            (the last one).
        max_size: cap on the long side.
        heads: FPN width, anchors and mask resolution (:class:`Heads`).
        maskrcnn_kwargs: passed to torchvision's ``MaskRCNN`` (e.g.
            ``box_detections_per_img``, ``rpn_batch_size_per_image``).

    The FPN width (128 for vovnet19lite/slim) flows into the RPN, box and mask heads;
    the mask head's convs take that width too, so "Lite" is light end to end.

    In train mode the model takes ``images: list[Tensor[3, H, W]]`` and targets and returns
    a dict of losses; in eval mode it returns per image ``boxes [N, 4]``, ``labels [N]``,
    ``scores [N]`` and ``masks [N, 1, H, W]`` in the pixels of the images it was given.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    fpn = build_backbone(backbone, norm=norm, pretrained=pretrained, freeze_at=freeze_at,
                         fpn_channels=heads.fpn_channels)
    width = fpn.out_channels
    min_sizes: Tuple[int, ...] = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if width != 256 and "mask_predictor" not in maskrcnn_kwargs:
        maskrcnn_kwargs.setdefault("mask_head", MaskRCNNHeads(width, [width] * MASK_HEAD_CONVS, 1))
        maskrcnn_kwargs["mask_predictor"] = MaskRCNNPredictor(width, width, num_classes)
    if "mask_predictor" in maskrcnn_kwargs:
        # torchvision then wants every predictor given and num_classes None.
        maskrcnn_kwargs.setdefault("box_predictor",
                                   FastRCNNPredictor(BOX_HEAD_REPRESENTATION, num_classes))
        classes_argument = None
    else:
        classes_argument = num_classes
    if heads.mask_resolution != 2 * MASK_ROI_SIZE:
        maskrcnn_kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(
            FPN_LEVELS, output_size=heads.mask_resolution // 2, sampling_ratio=2))
    ratios, scales = heads.anchor_ratios, heads.anchor_scales
    if ratios != DEFAULT_ANCHOR_RATIOS or scales != 1:
        sizes = anchor_sizes(scales)
        maskrcnn_kwargs.setdefault("rpn_anchor_generator", AnchorGenerator(
            sizes, (ratios,) * len(sizes)))
        maskrcnn_kwargs.setdefault("rpn_head", RPNHead(width, len(ratios) * scales))
    model = MaskRCNN(fpn, num_classes=classes_argument, min_size=min_sizes, max_size=max_size,
                     **maskrcnn_kwargs)
    transform = model.transform
    model.transform = PageTransform(min_sizes, max_size, transform.image_mean, transform.image_std,
                                    size_divisible=transform.size_divisible,
                                    fixed_size=transform.fixed_size)
    return model


def build_model_from_config(config: TrainConfig, num_classes: int, *,
                            with_pretrained: bool = False) -> MaskRCNN:
    """The model a run's config describes, with ``num_classes`` classes (background
    included). ``with_pretrained``: load ``config.pretrained`` into the body (a fresh run);
    otherwise the weights come from a checkpoint."""
    return build_model(config.backbone, num_classes,
                       pretrained=config.pretrained if with_pretrained else None,
                       norm=config.resolved_norm, min_size=config.min_size,
                       max_size=config.max_size, freeze_at=config.freeze_at,
                       heads=Heads(fpn_channels=config.fpn_channels,
                                   anchor_ratios=tuple(config.anchor_ratios),
                                   anchor_scales=config.anchor_scales,
                                   mask_resolution=config.mask_resolution),
                       box_batch_size_per_image=config.rois_per_image,
                       box_detections_per_img=config.detections_per_image)


__all__: List[str] = ["Heads", "anchor_sizes", "build_model", "build_model_from_config",
                      "PageTransform"]
