"""``python -m maskdla.export``: a checkpoint's model as ONNX or TorchScript, for
deployment where PyTorch (or maskdla) is not wanted.

Command line::

    python -m maskdla.export CHECKPOINT --format onnx|torchscript --out FILE
        [--score-thresh 0.05] [--max-detections 100] [--opset 17]

The exported graph is :class:`RawDetectionsModel`: one image ``Float[3, h, w]`` in [0, 1],
already at the model's size (the training rule, as ``maskdla.predict`` loads it), in;
``boxes`` Float[N, 4] xyxy in that image's pixels, ``labels`` Int64[N] (1-based into the
classes), ``scores`` Float[N] and ``masks`` Float[N, 1, 28, 28] mask probabilities over
each box out: everything but mask pasting, which ``maskdla.predict`` replaces by tracing
the 28 x 28 maps. The classes, sizes and thresholds travel in the file (ONNX metadata
``maskdla``, TorchScript extra file ``maskdla.json``), so
``python -m maskdla.predict MODEL.onnx ... --engine onnxruntime`` needs nothing else.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList

from maskdla.checkpoint import load_model
from maskdla.cli import non_negative_float, positive_int, run_main
from maskdla.errors import InputError
from maskdla.inference import test_size
from maskdla.prediction.engines import METADATA_KEY

__all__ = ["RawDetectionsModel", "export_onnx", "export_torchscript", "EXPORTERS", "main"]

PathLike = Union[str, "os.PathLike[str]"]
Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class RawDetectionsModel(torch.nn.Module):
    """A torchvision MaskRCNN's eval forward for one image, without resizing and without
    the postprocess (the graph of :func:`maskdla.inference.raw_detections`, in float32).

    The model's transform would only normalise and pad an image at the training size
    (:class:`maskdla.model.PageTransform` does not resize it); its resize logic is Python
    that neither tracing nor scripting can follow, so this module normalises and pads
    itself.

    Input: Float[3, h, w] in [0, 1]. Output: ``(boxes Float[N, 4], labels Int64[N],
    scores Float[N], masks Float[N, 1, M, M])``, boxes in the input's pixels.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(3, 1, 1))
        self.size_divisible = int(transform.size_divisible)
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads

    def forward(self, image: torch.Tensor) -> Outputs:
        height, width = image.shape[-2], image.shape[-1]
        stride = self.size_divisible
        normalised = (image - self.mean) / self.std
        # pad bottom and right to a multiple of the stride, as torchvision batches images
        padded = F.pad(normalised, [0, (stride - width % stride) % stride,
                                    0, (stride - height % stride) % stride])
        images = ImageList(padded[None], [(height, width)])
        features = self.backbone(images.tensors)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        detection = detections[0]
        return detection["boxes"], detection["labels"], detection["scores"], detection["masks"]


def _prepare(checkpoint: Union[PathLike, Dict[str, Any]], score_thresh: float,
             max_detections: int) -> Tuple[RawDetectionsModel, Dict[str, Any], torch.Tensor]:
    """The export module, its metadata and an example image at the model's size."""
    model, loaded = load_model(checkpoint, "cpu")
    model.roi_heads.score_thresh = score_thresh
    model.roi_heads.detections_per_img = max_detections
    min_size, max_size = test_size(loaded["config"])
    config = loaded["config"]
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    metadata = {"classes": list(loaded["classes"]), "min_size": min_size, "max_size": max_size,
                "score_thresh": score_thresh, "detections_per_img": max_detections,
                "mask_resolution": 28, "config": config}
    # an example page at the training size (portrait, like a scan); the graph takes any size
    example = torch.rand(3, round(min_size * 1.4) // 32 * 32 + 7, min_size,
                         generator=torch.Generator().manual_seed(0))
    return RawDetectionsModel(model).eval(), metadata, example


def export_onnx(checkpoint: Union[PathLike, Dict[str, Any]], path: PathLike, *,
                score_thresh: float = 0.05, max_detections: int = 100, opset: int = 17) -> None:
    """Export to ONNX (torch.onnx's TorchScript-based exporter, dynamic image size and
    detection count); the metadata is stored under ``maskdla``. Written atomically."""
    try:
        import onnx
    except ImportError:
        raise InputError("--format onnx needs onnx: pip install 'maskdla[onnx]'") from None
    module, metadata, example = _prepare(checkpoint, score_thresh, max_detections)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    names = ["boxes", "labels", "scores", "masks"]
    try:
        with warnings.catch_warnings():  # the tracer's notes on torchvision's shape code
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(temporary), opset_version=opset,
                              dynamo=False, input_names=["image"], output_names=names,
                              dynamic_axes={"image": {1: "height", 2: "width"},
                                            **{name: {0: "detections"} for name in names}})
        graph = onnx.load(str(temporary))
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(graph, str(temporary))
        os.replace(temporary, path)
    except OSError as error:
        raise InputError(f"cannot write: {error.strerror or error}", path) from None
    finally:
        temporary.unlink(missing_ok=True)


def export_torchscript(checkpoint: Union[PathLike, Dict[str, Any]], path: PathLike, *,
                       score_thresh: float = 0.05, max_detections: int = 100,
                       opset: Optional[int] = None) -> None:
    """Export with ``torch.jit.script`` (any image size and detection count); the metadata
    is the extra file ``maskdla.json``. Written atomically."""
    module, metadata, _ = _prepare(checkpoint, score_thresh, max_detections)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.script(module)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(scripted, str(temporary),
                           _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
        os.replace(temporary, path)
    except OSError as error:
        raise InputError(f"cannot write: {error.strerror or error}", path) from None
    finally:
        temporary.unlink(missing_ok=True)


#: ``--format`` -> exporter
EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.export",
        description="Export a checkpoint's model (up to the 28x28 mask probabilities) as "
                    "ONNX or TorchScript; run it with python -m maskdla.predict "
                    "--engine onnxruntime.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a maskdla checkpoint (.pth)")
    parser.add_argument("--format", choices=list(EXPORTERS), required=True)
    parser.add_argument("--out", required=True, metavar="FILE", help="the exported model")
    parser.add_argument("--score-thresh", type=non_negative_float, default=0.05, metavar="S",
                        help="the model's box score threshold, baked in (default 0.05, "
                             "torchvision's); predict may use any threshold at or above it")
    parser.add_argument("--max-detections", type=positive_int, default=100, metavar="N",
                        help="at most N detections per image, baked in (default 100)")
    parser.add_argument("--opset", type=positive_int, default=17,
                        help="ONNX opset (default 17; >= 11)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.score_thresh > 1:
        raise InputError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.opset < 11:
        raise InputError(f"--opset {args.opset}: Mask R-CNN needs opset 11 or later")
    out = Path(args.out)
    if out.is_dir():
        raise InputError("--out must name a file, not a folder", out)
    EXPORTERS[args.format](args.checkpoint, out, score_thresh=args.score_thresh,
                           max_detections=args.max_detections, opset=args.opset)
    print(f"{args.checkpoint} -> {out} ({args.format}, {out.stat().st_size / 1e6:.1f} MB)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
