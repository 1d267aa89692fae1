"""TensorBoard event files of a training run (``--tensorboard``, the ``tensorboard`` extra).

A :class:`maskdla.hooks.TrainHooks` that writes, under ``RUN/tensorboard/`` (rank 0 only):

* every log.jsonl line as scalars: ``loss/*`` (the total and each term), ``lr``,
  ``speed/images_per_s``, ``speed/data_wait_percent``, ``resources/gpu_memory_mib``,
  ``resources/gpu_power_w`` and ``resources/energy_kwh`` (energy so far) where measured,
  ``stability/skipped_steps`` and ``stability/clipped_steps`` (per log window);
* every evaluation's figures as ``val/bbox/AP``, ``val/segm/AP50``... (``test/...`` when
  the run has no validation split), per class as ``val/segm/per_class/NAME``, and the
  final test evaluation as ``final_test/...``;
* at each evaluation, the predictions on the first pages of the evaluated split drawn
  over the page (:func:`maskdla.prediction.overlay.draw_overlay`) as ``overlay/N``.

log.jsonl stays the source of truth; this only mirrors it. It imports the loop's hooks and
state, never the loop; the loop imports it only when asked for (the extra may be missing).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image

from maskdla.errors import InputError
from maskdla.inference import raw_detections
from maskdla.prediction.overlay import draw_overlay
from maskdla.prediction.predictor import detections_to_page
from maskdla.hooks import LOSS_NAMES, TrainHooks
from maskdla.run_state import Run

#: log.jsonl key -> TensorBoard tag (other numeric keys: ``train/KEY``)
TAGS = {"loss": "loss/total", **{name: f"loss/{name[len('loss_'):]}" for name in LOSS_NAMES},
        "lr": "lr", "epoch": "epoch",
        "images_per_s": "speed/images_per_s", "data_wait_percent": "speed/data_wait_percent",
        "gpu_memory_mib": "resources/gpu_memory_mib", "gpu_power_w": "resources/gpu_power_w",
        "energy_kwh": "resources/energy_kwh", "skipped_steps": "stability/skipped_steps",
        "clipped_steps": "stability/clipped_steps"}
#: log.jsonl keys that are not scalars of the run
NOT_SCALARS = ("iteration", "time")


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard needs the tensorboard package, which is not "
                         "installed: pip install 'maskdla[tensorboard]'") from None
    return SummaryWriter


class TensorBoardWriter(TrainHooks):
    """Mirror a run's log lines, evaluations and a few overlays into TensorBoard.

    Args:
        overlay_pages: pages of the evaluated split drawn at each evaluation.
    """

    def __init__(self, overlay_pages: int = 3):
        self.writer_class = _summary_writer_class()  # fails before training starts
        self.overlay_pages = overlay_pages
        self.writer: Optional[Any] = None
        self.run: Optional[Run] = None

    def started(self, run: Run) -> None:
        self.run = run
        if run.context.is_main:
            # a resumed run drops the events its checkpoint does not cover
            self.writer = self.writer_class(log_dir=str(run.run_dir / "tensorboard"),
                                            purge_step=run.iteration or None)

    def logged(self, record: Dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in NOT_SCALARS and _is_number(value):
                self.writer.add_scalar(TAGS.get(key, f"train/{key}"), value, record["iteration"])
        self.writer.flush()

    def evaluated(self, iteration: int, metrics: Dict[str, Any]) -> None:
        if self.writer is None or self.run is None:
            return
        split = "val" if self.run.val_set is not None else "test"
        self._metrics(split, metrics, iteration)
        self._overlays(iteration)
        self.writer.flush()

    def finished(self, summary: Dict[str, Any]) -> None:
        if self.writer is None:
            return
        if "metrics" in summary:
            self._metrics("final_test", summary["metrics"], summary["iterations"])
        self.writer.close()
        self.writer = None

    def _metrics(self, prefix: str, metrics: Dict[str, Any], step: int) -> None:
        for task, figures in metrics.items():
            if not isinstance(figures, dict):
                continue
            for name, value in figures.items():
                if isinstance(value, dict):
                    for key, item in value.items():
                        if _is_number(item):
                            self.writer.add_scalar(f"{prefix}/{task}/{name}/{key}", item, step)
                elif _is_number(value):
                    self.writer.add_scalar(f"{prefix}/{task}/{name}", value, step)

    @torch.no_grad()
    def _overlays(self, iteration: int) -> None:
        """The model's regions on the first pages of the evaluated split (uint8 HWC)."""
        run = self.run
        dataset = run.val_set if run.val_set is not None else run.test_set
        model = run.bare_model.eval()
        for index in range(min(self.overlay_pages, len(dataset))):
            image, _ = dataset[index]
            detections, _ = raw_detections(model, [image.to(run.device)])
            found = {key: value.cpu() for key, value in detections[0].items()}
            page = detections_to_page(found["boxes"], found["labels"], found["scores"],
                                      found["masks"], run.classes, tuple(image.shape[1:]))
            pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            drawn = draw_overlay(Image.fromarray(pixels), page, run.classes)
            self.writer.add_image(f"overlay/{index}", np.asarray(drawn), iteration,
                                  dataformats="HWC")


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
