"""Mask R-CNN detections -> COCO results in the pixels of the ORIGINAL image.

The model runs on pages resized to the training resolution (~800 px short side) while the
ground truth is at the scan's resolution (e.g. 2,700 x 3,900 px). torchvision's
``paste_masks_in_image`` would build one full-image float mask per instance (40 MB each at
that size) and RLE-encoding would then scan every pixel. Here each 28 x 28 mask probability
map is resized only to its box (in original pixels), thresholded there, and run-length
encoded straight from the box: the cost follows the box area, not the page area.
``python -m maskdla.bench eval`` measures both ways.

The pasting follows torchvision exactly (``expand_masks`` by one pixel of padding, the box
grown by the same factor and cast to int, bilinear resize with ``align_corners=False``), so a
mask equals ``paste_masks_in_image(...) > threshold`` computed at the original size.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

# scale_boxes lives below evaluation, beside raw_detections, since prediction uses it too
from maskdla.inference import scale_boxes

#: a binary mask cut to its box: (top row, left column, bool array [h, w])
BoxMask = Tuple[int, int, np.ndarray]


def paste_box_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: Tuple[int, int],
                    threshold: float = 0.5) -> List[BoxMask]:
    """Paste mask probabilities into their boxes and threshold them, box by box.

    Args:
        masks: Float[N, 1, M, M] (or [N, M, M]) probabilities from ``roi_heads``.
        boxes: Float[N, 4] xyxy in the pixels of the image of ``image_size``.
        image_size: (height, width) of the image the masks are pasted into.
        threshold: a pixel is in the mask when its probability is > ``threshold``.

    Returns:
        per instance ``(top, left, mask)``: ``mask`` Bool[h, w] is the part of the pasted
        mask inside the image, at rows ``top:top+h`` and columns ``left:left+w``.
    """
    if masks.dim() == 3:
        masks = masks[:, None]
    masks = masks.float()
    padded, scale = expand_masks(masks, padding=1)
    boxes = expand_boxes(boxes.float(), scale).to(dtype=torch.int64).tolist()
    image_height, image_width = image_size
    pasted = []
    for mask, (x0, y0, x1, y1) in zip(padded, boxes):
        width, height = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        top, bottom = min(max(y0, 0), image_height), min(max(y1 + 1, 0), image_height)
        left, right = min(max(x0, 0), image_width), min(max(x1 + 1, 0), image_width)
        resized = F.interpolate(mask[None], size=(height, width), mode="bilinear",
                                align_corners=False)[0, 0]
        inside = resized[top - y0:bottom - y0, left - x0:right - x0] > threshold
        pasted.append((top, left, inside.cpu().numpy()))
    return pasted


def box_mask_to_rle(box_mask: BoxMask, image_size: Tuple[int, int]) -> Dict[str, object]:
    """COCO compressed RLE of a box mask pasted into an empty image of ``image_size`` (h, w).

    Equals ``pycocotools.mask.encode`` of the full Fortran-order image, without building it:
    the run boundaries are found inside the box and placed in column-major image order.
    Returns ``{"size": [h, w], "counts": str}`` (JSON-ready).
    """
    top, left, mask = box_mask
    image_height, image_width = image_size
    box_height, box_width = mask.shape
    # One zero above and below each box column: every run of ones starts and ends inside.
    columns = np.zeros((box_width, box_height + 2), dtype=bool)
    columns[:, 1:-1] = mask.T
    flat = columns.ravel()
    # Index i: the value changes between flat[i] and flat[i + 1], i.e. before box row
    # i % (h + 2) of box column i // (h + 2); never across columns (zeros on both sides).
    column, row = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]), box_height + 2)
    # Column-major image index of each change, in increasing order.
    changes = (left + column) * image_height + top + row
    # A run ending on the image's bottom row and one starting on the next column's top row
    # meet at the same index: they are one run.
    meeting = np.zeros(changes.size + 1, dtype=bool)
    meeting[1:-1] = changes[1:] == changes[:-1]
    changes = changes[~(meeting[1:] | meeting[:-1])]
    pixels = image_height * image_width
    changes = changes[changes < pixels]
    counts = np.diff(np.concatenate(([0], changes, [pixels])))
    rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [image_height, image_width]},
                                 image_height, image_width)
    return {"size": [image_height, image_width], "counts": rle["counts"].decode("ascii")}


def detections_to_coco_results(detections: Dict[str, torch.Tensor], image_id: int,
                               input_size: Tuple[int, int], orig_size: Tuple[int, int],
                               category_ids: Sequence[int],
                               mask_threshold: float = 0.5) -> List[dict]:
    """One image's detections -> COCO results in the pixels of the original image.

    Args:
        detections: ``roi_heads`` output for one image, in the pixels of the model input:
            boxes Float[N, 4] xyxy, labels Int64[N] in 1..C, scores Float[N], and optionally
            masks Float[N, 1, M, M] probabilities (not yet pasted).
        image_id: COCO image id.
        input_size: (h, w) of the image the model saw (after its transform).
        orig_size: (h, w) of the original image.
        category_ids: COCO category id of label i at index i - 1.
        mask_threshold: mask probability above which a pixel belongs to the mask.

    Returns:
        ``[{"image_id", "category_id", "score", "bbox": [x, y, w, h]}]`` plus
        ``"segmentation"`` (compressed RLE at ``orig_size``) when masks are given.
    """
    boxes = scale_boxes(detections["boxes"].float(), input_size, orig_size)
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    labels = detections["labels"].tolist()
    scores = detections["scores"].float().tolist()
    results = [{"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                "score": score, "bbox": box}
               for label, score, box in zip(labels, scores, xywh.tolist())]
    if "masks" in detections:
        for result, box_mask in zip(results, paste_box_masks(detections["masks"], boxes,
                                                             orig_size, mask_threshold)):
            result["segmentation"] = box_mask_to_rle(box_mask, orig_size)
    return results
