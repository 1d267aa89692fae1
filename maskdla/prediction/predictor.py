"""From page images to regions: :class:`Predictor` (the command line is
``python -m maskdla.predict``).

The pipeline per page (see docs/prediction.md):

1. the image is decoded and resized with the training rule
   (:func:`maskdla.data.resize.training_size` at the checkpoint's last ``min_size``);
2. an engine (:mod:`maskdla.prediction.engines`: PyTorch, or an exported model in
   onnxruntime) runs the model batched up to its mask head (float16 autocast for the
   backbone on CUDA): boxes, labels, scores and each detection's 28 x 28 mask
   probabilities, never pasted into the page;
3. :mod:`maskdla.prediction.vectorize` traces the masks into polygons at the original resolution
   (one region per connected component, holes dropped, simplified, clipped to the page)
   and merges overlapping regions; :mod:`maskdla.prediction.order` orders them by layout
   (columns left to right, running titles first, margins after their column);
4. :func:`maskdla.data.pagexml.write_page` writes the PAGE file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from maskdla.data.dataset import decode_image
from maskdla.data.image import displayed_size, to_rgb
from maskdla.data.page import Page, Region
from maskdla.data.resize import training_size
from maskdla.errors import InputError
from maskdla.inference import resolve_device, scale_boxes
from maskdla.prediction.engines import ENGINES, EngineOptions
from maskdla.prediction.order import layout_reading_order
from maskdla.prediction.vectorize import (PostProcess, as_numpy, merge_overlaps,
                                         scored_mask_polygons, snap_to_pixels)

__all__ = ["Predictor", "PostProcess", "detections_to_page", "page_to_coco_results",
           "load_image", "IMAGE_SUFFIXES"]

PathLike = Union[str, "os.PathLike[str]"]
#: what :meth:`Predictor.predict` takes: a file, a PIL image or a CHW tensor
ImageInput = Union[PathLike, Image.Image, torch.Tensor]

#: image file suffixes taken from input folders (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: PAGE element of every predicted region; pagexml writes music labels as MusicRegion
REGION_KIND = "TextRegion"


# --------------------------------------------------------------------------------------
# Detections -> Page


def detections_to_page(boxes: Any, labels: Any, scores: Any, mask_probs: Any,
                       classes: Sequence[str], image_size: Tuple[int, int],
                       image_filename: str = "", *,
                       postprocess: PostProcess = PostProcess()) -> Page:
    """One image's detections -> a :class:`Page` of regions in reading order.

    Args:
        boxes: Float[N, 4] xyxy in ORIGINAL image pixels.
        labels: Int64[N] in 1..C (label i is ``classes[i - 1]``).
        scores: Float[N].
        mask_probs: Float[N, 1, M, M] (or [N, M, M]) mask probabilities over each box.
        classes: class names without background.
        image_size: (height, width) of the original image.
        image_filename: written as the PAGE ``imageFilename``.
        postprocess: the thresholds, merging and simplification
            (:class:`~maskdla.prediction.vectorize.PostProcess`; its fields
            ``overlap_thresh``, ``no_merge_classes``: see
            :func:`maskdla.prediction.vectorize.merge_overlaps`; ``tolerance``,
            ``min_area``, ``largest_only``: see
            :func:`maskdla.prediction.vectorize.instance_masks_to_polygons`).

    Returns:
        The page; region ids ``r1, r2, ...`` in reading order
        (:func:`maskdla.prediction.order.layout_reading_order`; also ``reading_order``),
        ``kind`` TextRegion, ``label`` the class name, ``score`` the detection's score,
        ``polygon`` integer points (:func:`maskdla.prediction.vectorize.snap_to_pixels`: what the
        PAGE file holds; regions thinner than a pixel disappear).
    """
    scores = np.asarray(as_numpy(scores), dtype=np.float64).reshape(-1)
    labels = np.asarray(as_numpy(labels), dtype=np.int64).reshape(-1)
    keep, components = scored_mask_polygons(boxes, scores, mask_probs, image_size, postprocess)
    height, width = int(image_size[0]), int(image_size[1])
    polygons, names, region_scores = [], [], []
    for detection, parts in zip(keep.tolist(), components):
        for polygon in parts:
            polygons.append(polygon)
            names.append(classes[labels[detection] - 1])
            region_scores.append(float(scores[detection]))
    merged = merge_overlaps(polygons, names, region_scores,
                            overlap_thresh=postprocess.overlap_thresh,
                            exempt=postprocess.no_merge_classes)
    # PAGE stores integer points: snap here, so the Page is exactly what the file holds
    snapped = snap_to_pixels([polygon for polygon, _, _ in merged], (height, width))
    merged = [(polygon, label, score) for polygon, (_, label, score) in zip(snapped, merged)
              if polygon is not None]
    order = layout_reading_order([polygon for polygon, _, _ in merged],
                                 [label for _, label, _ in merged])
    page = Page(image_filename=image_filename, width=width, height=height)
    for number, index in enumerate(order, 1):
        polygon, label, score = merged[index]
        # PAGE wants the ring open: the exterior's closing point is left out
        points = [(x, y) for x, y in np.asarray(polygon.exterior.coords)[:-1].tolist()]
        page.regions.append(Region(id=f"r{number}", kind=REGION_KIND, label=label,
                                   polygon=points, score=score))
    page.reading_order = [region.id for region in page.regions]
    return page


def page_to_coco_results(page: Page, image_id: int, classes: Sequence[str]) -> List[dict]:
    """The regions of a predicted page as COCO results (pycocotools ``loadRes`` format).

    Each region: ``image_id``, ``file_name`` (the page's image file name, to map the ids
    onto a ground truth), ``category_id`` (label: ``classes.index(label) + 1``), ``score``,
    ``bbox`` ``[x, y, w, h]`` of the polygon and ``segmentation`` (compressed RLE of the
    polygon at the page's size). Regions without a score are no model's detections (the
    regions made for text lines outside every region) and are left out.
    """
    from pycocotools import mask as mask_utils  # only the --coco path needs it

    results = []
    for region in page.regions:
        if region.score is None:
            continue
        flat = [coordinate for point in region.polygon for coordinate in point]
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], page.height, page.width))
        xs = [x for x, _ in region.polygon]
        ys = [y for _, y in region.polygon]
        results.append({
            "image_id": int(image_id), "file_name": page.image_filename,
            "category_id": list(classes).index(region.label) + 1,
            "score": float(region.score),
            "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
            "segmentation": {"size": [page.height, page.width],
                             "counts": rle["counts"].decode("ascii")}})
    return results


# --------------------------------------------------------------------------------------
# Predictor


class Predictor:
    """A trained model that turns page images into :class:`Page` objects.

    Args:
        checkpoint: a checkpoint file or a loaded checkpoint dict
            (:func:`maskdla.checkpoint.load_model`).
        device: torch device; default CUDA when available, else CPU.
        postprocess: how detections become regions
            (:class:`~maskdla.prediction.vectorize.PostProcess`: score, mask and overlap
            thresholds, classes never merged, simplification, smallest area, largest
            component only); its ``score_thresh`` is also the model's own box score
            threshold, so that 0 keeps everything.
        max_detections: at most this many detections per image (default: the model's,
            torchvision's 100).
        amp: autocast for the backbone and RPN (float16 on CUDA, bfloat16 on the CPU;
            the RoI heads stay float32); default on for CUDA, off otherwise. On a CPU
            without bfloat16 kernels (:func:`maskdla.inference.cpu_supports_bf16`) bf16
            is emulated, and slower than float32.
        engine: a row of :data:`maskdla.prediction.engines.ENGINES`: ``torch`` (a
            checkpoint) or ``onnxruntime`` (``checkpoint`` is then a model exported by
            ``python -m maskdla.export``, which carries the classes and sizes).
        threads: onnxruntime's intra-op threads (default: its own, all cores).

    Raises:
        InputError: an unusable checkpoint, device, engine or class name, or a threshold
            outside [0, 1].
    """

    def __init__(self, checkpoint: Union[PathLike, Dict[str, Any]],
                 device: Optional[Union[str, torch.device]] = None, *,
                 postprocess: PostProcess = PostProcess(),
                 max_detections: Optional[int] = None, amp: Optional[bool] = None,
                 engine: str = "torch", threads: Optional[int] = None):
        if device is None and engine != "torch":
            device = "cpu"  # the exported engines run on the CPU
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        for name in ("score_thresh", "overlap_thresh", "mask_thresh"):
            value = getattr(postprocess, name)
            if not 0 <= value <= 1:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if max_detections is not None and max_detections < 1:
            raise InputError(f"max_detections must be >= 1, got {max_detections}")
        self.amp = self.device.type == "cuda" if amp is None else amp
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        self.engine = ENGINES[engine](checkpoint, EngineOptions(
            device=self.device, score_thresh=postprocess.score_thresh,
            max_detections=max_detections, amp=self.amp, threads=threads))
        #: the PyTorch model (None for an exported one)
        self.model = getattr(self.engine, "model", None)
        self.checkpoint = self.engine.checkpoint
        self.classes: List[str] = list(self.engine.classes)
        self.min_size, self.max_size = self.engine.min_size, self.engine.max_size
        unknown = [name for name in postprocess.no_merge_classes if name not in self.classes]
        if unknown:
            raise InputError(f"unknown class(es) {', '.join(unknown)} to exempt from merging; "
                             f"the model's classes are {', '.join(self.classes)}")
        #: how :meth:`to_page` turns detections into regions
        self.postprocess = postprocess

    def load(self, image: ImageInput) -> Tuple[torch.Tensor, Tuple[int, int], str]:
        """An input image at the model's size.

        Returns:
            ``(image Float[3, h, w] in [0, 1], (H0, W0) original size, file name)``; the
            file name is "" for a tensor or a PIL image not read from a file.

        Raises:
            InputError: a file that is missing or cannot be decoded, or a bad tensor.
        """
        if isinstance(image, torch.Tensor):
            return self._load_tensor(image), tuple(image.shape[-2:]), ""
        if isinstance(image, Image.Image):
            name = Path(getattr(image, "filename", "") or "").name
            shown = ImageOps.exif_transpose(image)  # the page as displayed
            pixels = torch.from_numpy(np.array(to_rgb(shown))).permute(2, 0, 1)
            return self._load_tensor(pixels), (shown.height, shown.width), name
        return load_image(image, self.min_size, self.max_size)

    def _load_tensor(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
            raise InputError(f"an image tensor must be [3, H, W] (or [1, H, W]), "
                             f"got {tuple(image.shape)}")
        image = image.detach().cpu()
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        image = image.expand(3, -1, -1)
        size = training_size(image.shape[1], image.shape[2], self.min_size, self.max_size)
        if size != tuple(image.shape[1:]):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0, 1)
        return image

    @torch.inference_mode()
    def detect(self, images: Sequence[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Run the model on images already at its size (from :meth:`load`).

        Returns per image the raw detections on the CPU in the pixels of the given image:
        ``boxes`` Float[N, 4] xyxy, ``labels`` Int64[N], ``scores`` Float[N], ``masks``
        Float[N, 1, 28, 28] probabilities over each box (not pasted).
        """
        if not images:
            return []
        return self.engine(images)

    def to_page(self, detection: Dict[str, torch.Tensor], input_size: Tuple[int, int],
                original_size: Tuple[int, int], image_filename: str = "") -> Page:
        """Raw detections of :meth:`detect` on an image of ``input_size`` (h, w) -> Page at
        ``original_size`` (h, w)."""
        boxes = scale_boxes(detection["boxes"], input_size, original_size)
        return detections_to_page(boxes, detection["labels"],
                                  detection["scores"], detection["masks"], self.classes,
                                  original_size, image_filename,
                                  postprocess=self.postprocess)

    def predict(self, image: ImageInput) -> Page:
        """One image (file, PIL image or Float/UInt8[3, H, W] tensor) -> its Page."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> List[Page]:
        """Several images in one model batch -> their Pages (InputError on a bad image)."""
        loaded = [self.load(image) for image in images]
        detections = self.detect([tensor for tensor, _, _ in loaded])
        return [self.to_page(detection, tuple(tensor.shape[-2:]), original, name)
                for detection, (tensor, original, name) in zip(detections, loaded)]


def load_image(image: PathLike, min_size: int, max_size: int
               ) -> Tuple[torch.Tensor, Tuple[int, int], str]:
    """An image file as displayed (EXIF orientation applied), at the model's size.

    Returns:
        ``(image Float[3, h, w] in [0, 1], (H0, W0) displayed size, file name)``; h, w
        follow the training rule (:func:`maskdla.data.resize.training_size`).

    Raises:
        InputError: a file that is missing or cannot be decoded.
    """
    path = Path(image)
    width, height = displayed_size(path)
    target_height, target_width = training_size(height, width, min_size, max_size)
    # the Dataset's decoder: the very pixels the model was trained on
    pixels = decode_image(path, target_width, target_height, (width, height))
    return _to_float_chw(pixels), (height, width), path.name


def _to_float_chw(pixels: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    """Decoded pixels, UInt8[3, H, W] tensor or UInt8[H, W, 3] array, -> Float[3, H, W] in
    [0, 1] (as the Dataset delivers images)."""
    if not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    return pixels.float().div_(255)
