"""What runs the model for :class:`maskdla.prediction.Predictor`: a row of :data:`ENGINES`.

An engine takes images already at the model's size (Float[3, h, w] in [0, 1], on the
CPU) and returns per image the raw detections on the CPU in that image's pixels:
``boxes`` Float[N, 4] xyxy, ``labels`` Int64[N], ``scores`` Float[N] and ``masks``
Float[N, 1, 28, 28] mask probabilities over each box (not pasted). Everything after that
(polygons, merging, reading order, XML) is the same for every engine.

Every engine is built the same way, ``ENGINES[name](model_file, EngineOptions(...))``, and
exposes the same attributes: ``source``, ``checkpoint`` (``classes`` and ``config`` as a
:class:`~maskdla.config.TrainConfig`), ``classes``, ``min_size``, ``max_size``.

* ``torch``: the checkpoint's model in PyTorch (:func:`maskdla.inference.raw_detections`);
* ``onnxruntime``: a model exported by ``python -m maskdla.export --format onnx``, run by
  onnxruntime (``pip install maskdla[onnx]``); the file carries the classes and sizes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from maskdla.checkpoint import checkpoint_config, load_model
from maskdla.errors import InputError
from maskdla.inference import raw_detections, scale_boxes, test_size
from maskdla.prediction.vectorize import PostProcess

__all__ = ["ENGINES", "METADATA_KEY", "EngineOptions", "TorchEngine", "OnnxRuntimeEngine"]

PathLike = Union[str, "os.PathLike[str]"]
Detections = Dict[str, torch.Tensor]

#: key of the exported model's metadata (JSON: classes, min_size, max_size, score_thresh,
#: detections_per_img, config)
METADATA_KEY = "maskdla"


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How an engine runs its model; every engine takes one and ignores the fields it
    has no use for (``amp`` for onnxruntime, ``threads`` for torch).

    Attributes:
        device: where the model runs (the exported engines: the CPU only).
        score_thresh: the box score threshold.
        max_detections: at most this many detections per image (None: the model's).
        amp: autocast for the backbone and RPN (the torch engine).
        threads: onnxruntime intra-op threads (None: its default, all cores).
    """

    device: torch.device = torch.device("cpu")
    score_thresh: float = PostProcess.score_thresh
    max_detections: Optional[int] = None
    amp: bool = False
    threads: Optional[int] = None


class TorchEngine:
    """The checkpoint's model in PyTorch.

    Args:
        checkpoint: a checkpoint file or loaded dict (:func:`maskdla.checkpoint.load_model`).
        options: ``device`` where the model runs; ``score_thresh`` becomes the model's own
            box score threshold (before the mask head); ``max_detections`` (None: the
            model's); ``amp``: autocast for the backbone and RPN (float16 on CUDA, bfloat16
            on the CPU), the RoI heads run in float32 (see
            :func:`maskdla.inference.raw_detections`). ``threads`` is not used.
    """

    name = "torch"

    def __init__(self, checkpoint: Union[PathLike, Dict[str, Any]], options: EngineOptions):
        self.device, self.amp = options.device, options.amp
        self.model, self.checkpoint = load_model(checkpoint, options.device)
        self.source = str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint"
        self.classes: List[str] = list(self.checkpoint["classes"])
        self.min_size, self.max_size = test_size(self.checkpoint["config"])
        # the model drops boxes at its own threshold (0.05) before the mask head runs
        self.model.roi_heads.score_thresh = options.score_thresh
        if options.max_detections is not None:
            self.model.roi_heads.detections_per_img = options.max_detections

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor]) -> List[Detections]:
        batch = [image.to(self.device, non_blocking=True) for image in images]
        detections, input_sizes = raw_detections(self.model, batch, amp=self.amp)
        result = []
        for detection, image, input_size in zip(detections, images, input_sizes):
            detection = {key: value.float().cpu() if value.is_floating_point() else value.cpu()
                         for key, value in detection.items()}
            # the model's transform leaves images at the training size alone, so this is
            # 1 for images from load(); it is not for images of another size
            detection["boxes"] = scale_boxes(detection["boxes"], input_size,
                                              tuple(image.shape[-2:]))
            result.append(detection)
        return result


class OnnxRuntimeEngine:
    """An exported ONNX model (``python -m maskdla.export``) run by onnxruntime, one image
    per call (the export takes one image of any size).

    Args:
        path: the ``.onnx`` file.
        options: ``device`` must be the CPU; ``score_thresh`` may not be below the
            threshold the model was exported with (the boxes below it are gone), higher
            ones are applied in post-processing; ``max_detections`` may not exceed the
            exported one, fewer keep the best-scoring; ``threads``: onnxruntime intra-op
            threads (None: its default, all cores). ``amp`` is not used.

    Raises:
        InputError: no onnxruntime, not a file, not a maskdla export, a device other
            than the CPU, or options beyond what the model was exported with.
    """

    name = "onnxruntime"

    def __init__(self, path: PathLike, options: EngineOptions):
        if options.device.type != "cpu":
            raise InputError(f"--engine {self.name} runs on the CPU; drop --device")
        score_thresh, max_detections = options.score_thresh, options.max_detections
        try:
            import onnxruntime
        except ImportError:
            raise InputError("--engine onnxruntime needs onnxruntime: "
                             "pip install 'maskdla[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise InputError("exported model not found", path)
        session_options = onnxruntime.SessionOptions()
        # idle threads spinning for work would take the cores the decoding workers need
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), session_options,
                                                        providers=["CPUExecutionProvider"])
            metadata = json.loads(
                self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        except KeyError:
            raise InputError("not a model exported by maskdla.export (no maskdla "
                             "metadata)", path) from None
        except Exception as error:  # onnxruntime raises its own exception types
            raise InputError(f"cannot load the ONNX model ({str(error).splitlines()[0]})",
                             path) from None
        self.source = str(path)
        # the config through the loader the torch engine's checkpoints go through, so both
        # engines hand on a TrainConfig (exports of older configs included)
        self.checkpoint = {"classes": list(metadata["classes"]),
                           "config": checkpoint_config(metadata, path)}
        self.classes: List[str] = list(metadata["classes"])
        self.min_size, self.max_size = int(metadata["min_size"]), int(metadata["max_size"])
        if score_thresh < metadata["score_thresh"]:
            raise InputError(f"score threshold {score_thresh} is below the "
                             f"{metadata['score_thresh']} the model was exported with "
                             f"(export again with --score-thresh)", path)
        if max_detections is not None and max_detections > metadata["detections_per_img"]:
            raise InputError(f"max_detections {max_detections} exceeds the "
                             f"{metadata['detections_per_img']} the model was exported with "
                             f"(export again with --max-detections)", path)
        self.max_detections = max_detections

    def __call__(self, images: Sequence[torch.Tensor]) -> List[Detections]:
        result = []
        for image in images:
            pixels = np.ascontiguousarray(image.detach().cpu().float().numpy())
            boxes, labels, scores, masks = self.session.run(None, {"image": pixels})
            keep = slice(0, self.max_detections)  # sorted by score: the best come first
            result.append({"boxes": torch.from_numpy(boxes[keep]).float(),
                           "labels": torch.from_numpy(labels[keep]).long(),
                           "scores": torch.from_numpy(scores[keep]).float(),
                           "masks": torch.from_numpy(masks[keep]).float()})
        return result


#: the engines by their ``--engine`` name; each is called ``(model_file, EngineOptions)``
ENGINES = {"torch": TorchEngine, "onnxruntime": OnnxRuntimeEngine}
