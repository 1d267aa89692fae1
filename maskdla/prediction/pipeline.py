"""A region model, a line model, or both -> pages of regions holding their text lines.

:class:`PagePipeline` runs up to two :class:`~maskdla.prediction.Predictor` s on each page:

* the **region model** (``task`` "regions") gives the regions, as ``Predictor.to_page``;
* the **line model** (``task`` "lines", ``python -m maskdla.train --task lines``) gives
  text lines (:func:`maskdla.prediction.baselines.lines_from_detections`: polygon and
  baseline from each mask), placed into the regions (:func:`maskdla.prediction.lines.place_lines`:
  lines outside every region get regions of their own, all in reading order).

Each model sees the page at its own test size (the last training ``min_size`` and the
``max_size`` its checkpoint holds); when both have the same size the image is decoded
once. With the line model alone every line sits in a made region.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from maskdla.data.page import Page
from maskdla.errors import InputError
from maskdla.inference import scale_boxes
from maskdla.prediction.baselines import BASELINE_POSITION, lines_from_detections
from maskdla.prediction.lines import orphan_zone_label, place_lines
from maskdla.prediction.predictor import ImageInput, Predictor

__all__ = ["Size", "ModelDetections", "PredictedPage", "PagePipeline", "model_task"]

#: a model's test size: (min_size, max_size)
Size = Tuple[int, int]


class ModelDetections(NamedTuple):
    """One model's raw detections on one page (:meth:`Predictor.detect`) and the (h, w)
    of the image it saw."""

    detection: Dict[str, torch.Tensor]
    input_size: Tuple[int, int]


class PredictedPage(NamedTuple):
    """A page as :meth:`PagePipeline.to_result` gives it.

    Attributes:
        page: regions and lines in reading order.
        dropped: line detections that are not on the page, by reason (empty without a
            line model).
        generated: regions made for lines outside every region.
    """

    page: Page
    dropped: Dict[str, int]
    generated: int


def model_task(predictor: Predictor) -> str:
    """What a predictor's model finds: ``"regions"`` or ``"lines"`` (the checkpoint's
    ``task``; checkpoints from before line models find regions)."""
    config = predictor.checkpoint.get("config")
    task = config.get("task") if isinstance(config, dict) else getattr(config, "task", None)
    return task or "regions"


class PagePipeline:
    """Page images -> pages with regions and text lines.

    Args:
        regions: the region model (None: lines alone, each in a made region).
        lines: the line model (None: regions alone, as ``regions.predict`` gives them).
            Its score threshold, mask threshold and simplification are its Predictor's
            (``postprocess``).
        baseline_position: where the baseline lies in a line polygon, as the fraction of
            its height above its lower edge
            (:data:`~maskdla.prediction.baselines.BASELINE_POSITION`).
        orphan_label: class of the regions made for lines outside every region (default
            :func:`~maskdla.prediction.lines.orphan_zone_label` of the region classes).

    Raises:
        InputError: no model, a region model that finds lines or a line model that finds
            regions, or a baseline position outside [0, 1].
    """

    def __init__(self, regions: Optional[Predictor] = None, lines: Optional[Predictor] = None,
                 *, baseline_position: float = BASELINE_POSITION,
                 orphan_label: Optional[str] = None):
        if regions is None and lines is None:
            raise InputError("a page pipeline needs a region model, a line model or both")
        if regions is not None and model_task(regions) != "regions":
            raise InputError(f"{regions.engine.source}: a {model_task(regions)} model where a "
                             "region model is wanted (give it as the line model: --lines)")
        if lines is not None and model_task(lines) != "lines":
            raise InputError(f"{lines.engine.source}: --lines needs a line model "
                             f"(trained with --task lines), this one finds "
                             f"{model_task(lines)}")
        if not 0 <= baseline_position <= 1:
            raise InputError(f"baseline position must be in [0, 1], got {baseline_position}")
        self.regions, self.lines = regions, lines
        self.models = [model for model in (regions, lines) if model is not None]
        #: the distinct test sizes, each decoded once per page
        self.sizes: List[Size] = list(dict.fromkeys((m.min_size, m.max_size)
                                                    for m in self.models))
        self.device = self.models[0].device
        #: the region classes (COCO results, overlay colours); [] without a region model
        self.classes: List[str] = list(regions.classes) if regions is not None else []
        self.line_classes: List[str] = list(lines.classes) if lines is not None else []
        self.baseline_position = baseline_position
        self.orphan_label = orphan_label or orphan_zone_label(self.classes)

    def _view(self, model: Predictor, views: Sequence[torch.Tensor]) -> torch.Tensor:
        return views[self.sizes.index((model.min_size, model.max_size))]

    def load(self, image: ImageInput) -> Tuple[List[torch.Tensor], Tuple[int, int], str]:
        """An input image at each of :attr:`sizes`: ``(views, (H0, W0), file name)``
        (see :meth:`Predictor.load`). InputError on a bad image."""
        owner = {(m.min_size, m.max_size): m for m in reversed(self.models)}
        loaded = [owner[size].load(image) for size in self.sizes]
        return [view for view, _, _ in loaded], loaded[0][1], loaded[0][2]

    def detect(self, pages: Sequence[Sequence[torch.Tensor]]
               ) -> List[Dict[str, ModelDetections]]:
        """Run the models on pages given as their views at :attr:`sizes` (from
        :meth:`load`); per page ``{"regions": ..., "lines": ...}`` for the models there."""
        result: List[Dict[str, ModelDetections]] = [{} for _ in pages]
        for role, model in (("regions", self.regions), ("lines", self.lines)):
            if model is None:
                continue
            images = [self._view(model, views) for views in pages]
            for found, detection, image in zip(result, model.detect(images), images):
                found[role] = ModelDetections(detection, tuple(image.shape[-2:]))
        return result

    def to_result(self, detections: Dict[str, ModelDetections], original_size: Tuple[int, int],
                  image_filename: str = "") -> PredictedPage:
        """One page's detections (:meth:`detect`) -> its page at ``original_size`` (h, w),
        with what was dropped."""
        height, width = original_size
        if self.regions is not None:
            found = detections["regions"]
            page = self.regions.to_page(found.detection, found.input_size, original_size,
                                        image_filename)
        else:
            page = Page(image_filename=image_filename, width=width, height=height)
        if self.lines is None:
            return PredictedPage(page, {}, 0)
        found = detections["lines"]
        boxes = scale_boxes(found.detection["boxes"], found.input_size, original_size)
        lines, dropped = lines_from_detections(
            boxes, found.detection["labels"], found.detection["scores"],
            found.detection["masks"], self.lines.classes, original_size,
            postprocess=self.lines.postprocess, baseline_position=self.baseline_position)
        placed = place_lines(page, lines, orphan_label=self.orphan_label, dropped=dropped)
        return PredictedPage(placed.page, placed.dropped, placed.generated)

    def predict(self, image: ImageInput) -> Page:
        """One image (file, PIL image or [3, H, W] tensor) -> its page."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> List[Page]:
        """Several images in one batch per model -> their pages."""
        loaded = [self.load(image) for image in images]
        detections = self.detect([views for views, _, _ in loaded])
        return [self.to_result(found, original, name).page
                for found, (_, original, name) in zip(detections, loaded)]
