"""Per backbone: parameters (body, whole Mask R-CNN), conv layers, CPU forward time of
the body on one 800x1333 image."""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List

import torch
from torch import nn

from maskdla.backbones import ALIASES, BACKBONES, build_body
from maskdla.model import build_model

DESCRIPTION = __doc__.splitlines()[0] + " " + __doc__.splitlines()[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbones", nargs="+", default=None, metavar="NAME",
                        help="backbones to measure (default: every registered one)")
    parser.add_argument("--size", default="800x1333", help="input HxW (default 800x1333)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed forward passes per backbone; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default, all cores)")


def main_path_convs(body: nn.Module) -> int:
    """Convs on the main path (projection shortcuts and eSE gates excluded)."""
    return sum(1 for name, module in body.named_modules()
               if isinstance(module, nn.Conv2d) and "downsample" not in name
               and not name.endswith("ese.fc"))


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def run(args: argparse.Namespace) -> Dict[str, object]:
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(side) for side in args.size.lower().split("x"))
    names = args.backbones or [name for name in BACKBONES if name not in ALIASES]
    rows: List[Dict[str, object]] = []
    image = torch.rand(1, 3, height, width)
    print(f"{'backbone':<14} {'body params':>12} {'model params':>13} {'convs':>6} "
          f"{'forward s (median)':>19}")
    for name in names:
        body = build_body(name).eval()
        model = build_model(name, num_classes=4)
        with torch.inference_mode():
            body(image)  # warm-up: allocator and kernel selection
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                body(image)
                times.append(time.perf_counter() - start)
        row = {"backbone": name, "body_params": count_parameters(body),
               "model_params": count_parameters(model), "conv_layers": main_path_convs(body),
               "forward_s": statistics.median(times)}
        rows.append(row)
        print(f"{name:<14} {row['body_params'] / 1e6:>11.2f}M {row['model_params'] / 1e6:>12.2f}M "
              f"{row['conv_layers']:>6} {row['forward_s']:>19.3f}")
    return {"size": [height, width], "threads": torch.get_num_threads(), "backbones": rows}
