"""What evaluation, prediction and training share to run a model: the device, the test
image size of a run, a data set whose bad pages travel as items,
Mask R-CNN's forward up to (not including) mask pasting, and its boxes scaled back to the
page."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torchvision.models.detection.image_list import ImageList

from maskdla.config import TrainConfig
from maskdla.errors import InputError


def resolve_device(name: Optional[str]) -> torch.device:
    """``--device`` -> a torch device: None picks CUDA when available, else the CPU.
    An unknown name or CUDA on a machine without it is an InputError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device: unknown device {name!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions and matrix products natively (oneDNN
    with AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated and slower."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_size(config: TrainConfig) -> Tuple[int, int]:
    """(min_size, max_size) at test time: torchvision tests at the last training min_size."""
    return config.test_min_size, config.max_size


def rpn_forward(model: torch.nn.Module, images: List[torch.Tensor],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None) -> Tuple[
                    ImageList, Optional[List[Dict[str, torch.Tensor]]], Dict[str, torch.Tensor],
                    List[torch.Tensor]]:
    """MaskRCNN's forward up to its RPN, in the model's current mode.

    Args:
        model: a torchvision ``MaskRCNN``.
        images: Float[3, H, W] tensors in [0, 1] on the model's device.
        targets: per image ``boxes`` Float[G, 4] xyxy (and any other keys), resized with the
            images by the model's transform; None for none.

    Returns:
        the transform's ``ImageList``, the resized targets (or None), the backbone's
        feature maps by name, and per image the proposals Float[P, 4] xyxy in the pixels of
        the model input, sorted by decreasing objectness.
    """
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = {"0": features}
    proposals, _ = model.rpn(image_list, features)
    return image_list, targets, features, proposals


def raw_detections(model: torch.nn.Module, images: List[torch.Tensor], amp: bool = False
                   ) -> Tuple[List[Dict[str, torch.Tensor]], List[Tuple[int, int]]]:
    """MaskRCNN's eval forward without its postprocess.

    Args:
        model: a torchvision ``MaskRCNN`` in eval mode.
        images: Float[3, H, W] tensors in [0, 1] on the model's device.
        amp: run the backbone and RPN under autocast (float16 on CUDA, bfloat16 on CPU).
            The RoI heads always run in float32, also inside a caller's autocast: under
            autocast torchvision decodes the boxes in half precision, 0.5-1 px steps at
            800-1333 px, three times more once scaled to the scan.

    Returns:
        per image ``boxes`` Float[N, 4] xyxy, ``labels``, ``scores`` in the pixels of the
        model input and ``masks`` Float[N, 1, M, M] mask-head probabilities (not pasted);
        and the input sizes (h, w) after the model's transform.
    """
    device_type = images[0].device.type
    half = torch.float16 if device_type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=device_type, dtype=half, enabled=amp):
        image_list, _, features, proposals = rpn_forward(model, images)
    features = {name: feature.float() for name, feature in features.items()}
    proposals = [boxes.float() for boxes in proposals]
    with torch.autocast(device_type=device_type, enabled=False):
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    return detections, [tuple(size) for size in image_list.image_sizes]


class ErrorsAsItems(torch.utils.data.Dataset):
    """Hands an item's InputError back as the item: raised in a DataLoader worker, it would
    reach the main process rewritten as a multi-line traceback text."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except InputError as error:
            return error


def scale_boxes(boxes: torch.Tensor, from_size: Tuple[int, int],
                to_size: Tuple[int, int]) -> torch.Tensor:
    """Boxes Float[N, 4] xyxy in an image of ``from_size`` (h, w) -> in ``to_size`` (h, w)."""
    ratio_height = to_size[0] / from_size[0]
    ratio_width = to_size[1] / from_size[1]
    factors = boxes.new_tensor([ratio_width, ratio_height, ratio_width, ratio_height])
    return boxes * factors
