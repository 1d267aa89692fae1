"""Recall of a Mask R-CNN's region proposals, per class: ``python -m maskdla.eval
CHECKPOINT --proposal-recall``.

The RoI heads only classify, refine and mask the boxes the RPN proposes: a region no
proposal overlaps cannot be detected at any score threshold. This module measures, for
each ground-truth region, its best IoU with the RPN's test-time proposals (the top 100,
300 and 1000 by objectness; torchvision keeps at most 1000 per image at test time), and
summarises it per class as the fraction of regions reaching IoU 0.5 and 0.7. A class with
low AP but high proposal recall is misclassified; one with low proposal recall is not
proposed at all (too small, too thin, too few examples for the RPN).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from maskdla.errors import InputError
from maskdla.inference import ErrorsAsItems, rpn_forward

#: proposal budgets: the top-N proposals (by objectness) a region may be matched to
PROPOSAL_BUDGETS: Tuple[int, ...] = (100, 300, 1000)
#: IoU a region's best proposal must reach to count as proposed
RECALL_IOUS: Tuple[float, ...] = (0.5, 0.7)

#: per image: ground-truth boxes Float[G, 4] xyxy, their labels Int[G] (1 = classes[0]) and
#: the proposals Float[P, 4] xyxy sorted by decreasing objectness, all in model-input pixels
ImageProposals = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def best_proposal_iou(boxes: torch.Tensor, proposals: torch.Tensor,
                      budgets: Sequence[int] = PROPOSAL_BUDGETS) -> torch.Tensor:
    """Each box's best IoU with the top ``n`` proposals, for each budget ``n``.

    Args:
        boxes: Float[G, 4] xyxy ground-truth boxes.
        proposals: Float[P, 4] xyxy, sorted by decreasing objectness (as the RPN returns them).
        budgets: proposal counts; a budget above P uses all P.

    Returns:
        Float[len(budgets), G]; 0 where there is no proposal.
    """
    best = boxes.new_zeros((len(budgets), len(boxes)))
    if len(boxes) == 0 or len(proposals) == 0:
        return best
    iou = box_iou(boxes.float(), proposals.float())  # [G, P]
    for row, budget in enumerate(budgets):
        best[row] = iou[:, :budget].max(dim=1).values if budget > 0 else 0.0
    return best


def recall_table(images: Iterable[ImageProposals], classes: Sequence[str], *,
                 budgets: Sequence[int] = PROPOSAL_BUDGETS,
                 ious: Sequence[float] = RECALL_IOUS) -> Dict[str, Any]:
    """Proposal recall per class and over all regions.

    Returns:
        ``{"budgets": [...], "ious": [...], "per_class": {name: row}, "all": row}`` where a
        row is ``{"regions": G, "median_side": px, "recall": {"50@100": r, ...}}``: the
        fraction of the class's regions whose best proposal among the top ``n`` reaches the
        IoU (``50`` = 0.5), and the median ``sqrt(w * h)`` of its boxes in model-input
        pixels; ``recall`` values are None for a class without regions.
    """
    best_per_class: List[List[torch.Tensor]] = [[] for _ in classes]
    sides_per_class: List[List[torch.Tensor]] = [[] for _ in classes]
    for boxes, labels, proposals in images:
        best = best_proposal_iou(boxes, proposals, budgets)
        sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
        for index in range(len(classes)):
            chosen = labels == index + 1
            best_per_class[index].append(best[:, chosen])
            sides_per_class[index].append(sides[chosen])

    def row(best: torch.Tensor, sides: torch.Tensor) -> Dict[str, Any]:
        recall: Dict[str, Optional[float]] = {}
        for iou in ious:
            for position, budget in enumerate(budgets):
                value = (best[position] >= iou).float().mean().item() if best.shape[1] else None
                recall[f"{round(iou * 100)}@{budget}"] = value
        return {"regions": int(best.shape[1]),
                "median_side": float(sides.median()) if len(sides) else None,
                "recall": recall}

    empty = torch.zeros((len(budgets), 0))
    per_class_best = [torch.cat(parts, dim=1) if parts else empty for parts in best_per_class]
    per_class_sides = [torch.cat(parts) if parts else torch.zeros(0) for parts in sides_per_class]
    return {"budgets": list(budgets), "ious": list(ious),
            "per_class": {name: row(best, sides) for name, best, sides
                          in zip(classes, per_class_best, per_class_sides)},
            "all": row(torch.cat([empty, *per_class_best], dim=1),
                       torch.cat([torch.zeros(0), *per_class_sides]))}


def _collate(batch: Sequence[Any]) -> Any:
    """Images with their boxes and labels only (not the masks); the first InputError."""
    for item in batch:
        if isinstance(item, InputError):
            return item
    return [(image, target["boxes"], target["labels"]) for image, target in batch]


def _proposals(model: torch.nn.Module, loader: DataLoader, device: torch.device
               ) -> Iterable[ImageProposals]:
    """The RPN's test-time proposals and the ground truth, resized alike by the model's
    transform, one image at a time."""
    for batch in loader:
        if isinstance(batch, InputError):
            raise batch
        images = [image.to(device) for image, _, _ in batch]
        targets = [{"boxes": boxes.to(device), "labels": labels.to(device)}
                   for _, boxes, labels in batch]
        _, targets, _, proposals = rpn_forward(model, images, targets)
        for target, found in zip(targets, proposals):
            yield target["boxes"].cpu(), target["labels"].cpu(), found.float().cpu()


def proposal_recall(model: torch.nn.Module, dataset: Any, *, batch_size: int = 2,
                    device: Optional[Union[str, torch.device]] = None, num_workers: int = 0,
                    classes: Optional[Sequence[str]] = None,
                    budgets: Sequence[int] = PROPOSAL_BUDGETS,
                    ious: Sequence[float] = RECALL_IOUS) -> Dict[str, Any]:
    """Per-class recall of ``model``'s RPN proposals on ``dataset`` (:func:`recall_table`).

    Args:
        model: a torchvision ``MaskRCNN`` (or DDP/DataParallel around one); run in eval mode
            under ``torch.inference_mode``, its mode restored afterwards.
        dataset: items ``(image Float[3, H, W], target)`` with ``target["boxes"]`` Float[G, 4]
            xyxy and ``target["labels"]`` Int[G] (1 = ``classes[0]``), e.g. a
            :class:`maskdla.data.dataset.Dataset`.
        classes: the label names; default ``dataset.classes``.
    """
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    loader = DataLoader(ErrorsAsItems(dataset), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return recall_table(_proposals(model, loader, device),
                                list(classes) if classes is not None else list(dataset.classes),
                                budgets=budgets, ious=ious)
    finally:
        model.train(was_training)


def format_recall_table(table: Dict[str, Any]) -> str:
    """A plain-text table: one line per class and one for all regions."""
    keys = list(table["all"]["recall"])
    rows = [*table["per_class"].items(), ("all", table["all"])]
    width = max(len("class"), *(len(name) for name, _ in rows))
    header = (f"{'class':<{width}}  regions  median side  "
              + "  ".join(f"{'R' + key:>9}" for key in keys))
    lines = ["RPN proposal recall (R50@100: share of regions whose best of the top 100 "
             "proposals has IoU >= 0.5; sides in model-input px)", header]
    for name, row in rows:
        side = "-" if row["median_side"] is None else f"{row['median_side']:.0f}"
        values = ["-" if value is None else f"{value:.3f}" for value in row["recall"].values()]
        lines.append(f"{name:<{width}}  {row['regions']:>7}  {side:>11}  "
                     + "  ".join(f"{value:>9}" for value in values))
    return "\n".join(lines)


__all__ = ["PROPOSAL_BUDGETS", "RECALL_IOUS", "best_proposal_iou", "recall_table",
           "proposal_recall", "format_recall_table"]
