"""Loader benchmark: pages/s of :class:`maskdla.data.Dataset` against a naive pipeline.

Both read the same 2,700 x 3,900 px JPEG pages with 25 regions each (synthetic, written to
a temporary folder) and produce the image and the masks at the 800 x 1333 training size,
in this process with one torch thread (= one DataLoader worker):

* ours: ``Dataset.__getitem__`` (reduced JPEG decoding, masks rasterised at the small
  size inside each region's box);
* ours with PIL decoding: the same with ``use_simplejpeg=False``, as on a platform without
  its wheel (JPEG through PIL ``draft`` and ``np.array``);
* ours through one DataLoader worker process: what training gets, the items crossing to
  this process through shared memory (wall clock only);
* naive: decode at full size, rasterise full-size masks (pycocotools, as torchvision's
  detection references do), then resize both (bilinear image, nearest masks on uint8,
  which is kinder to the naive side than torchvision's float masks).

Passes over all pages alternate between the pipelines; figures are medians over the passes.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from maskdla.cli import positive_int
from maskdla.data.dataset import Dataset, View, collate_fn, training_size
from maskdla.data.pagexml import write_page
from maskdla.data.synthetic import JPEG_QUALITY, render_page

DESCRIPTION = ("pages/s of the Dataset on 2,700x3,900 px JPEG pages with 25 regions at the "
               "800x1333 training size, one worker, against a naive full-size pipeline")

MIN_SIZE, MAX_SIZE = 800, 1333
ROWS, CAPITALS = 12, 1  # 2 * 12 + 1 = 25 regions a page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=positive_int, default=8,
                        help="distinct pages per pass (default 8)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed passes of each pipeline; medians are reported (default 5)")
    parser.add_argument("--width", type=positive_int, default=2700,
                        help="page width in px, height = width * 3900/2700 (default 2700)")


def write_pages(folder: Path, pages: int, width: int) -> None:
    """``pages`` synthetic pages of 25 regions as ``folder/*.jpg`` + ``folder/page/*.xml``."""
    (folder / "page").mkdir(parents=True)
    for index in range(pages):
        stem = f"bench-{index:03d}"
        image, page = render_page((1234, index), width, f"{stem}.jpg", rows=ROWS,
                                  capitals=CAPITALS)
        image.save(folder / f"{stem}.jpg", quality=JPEG_QUALITY)
        write_page(page, folder / "page" / f"{stem}.xml")


def naive_item(path: Path, annotations: List[Dict[str, Any]], height: int,
               width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full-size decode, full-size masks, then resize both: (image [3, h, w] float, masks
    [N, h, w] uint8)."""
    from pycocotools import mask as mask_utils

    image = np.array(Image.open(path).convert("RGB"))
    full_height, full_width = image.shape[:2]
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
    masks = []
    for annotation in annotations:
        rles = mask_utils.frPyObjects(annotation["segmentation"], full_height, full_width)
        masks.append(mask_utils.decode(mask_utils.merge(rles)))
    full_masks = torch.from_numpy(np.stack(masks)) if masks else \
        torch.zeros((0, full_height, full_width), dtype=torch.uint8)
    small = F.interpolate(tensor[None], size=(height, width), mode="bilinear",
                          align_corners=False)[0]
    small_masks = F.interpolate(full_masks[None], size=(height, width), mode="nearest")[0]
    return small, small_masks


def _timed(function: Callable[[], None]) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    function()
    return time.perf_counter() - wall, time.thread_time() - cpu


def _consume(items: Iterable[Any]) -> None:
    """Make every item and drop it at once (as a training step would, memory-wise)."""
    collections.deque(items, maxlen=0)


def _page_items(dataset: Dataset) -> List[Tuple[Path, List[Dict[str, Any]], Tuple[int, int]]]:
    """(image path, its annotations, training size) of every page: the naive pipeline's input."""
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for annotation in dataset.coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return [(dataset.image_path(index), by_image.get(info["id"], []),
             training_size(info["height"], info["width"], MIN_SIZE, MAX_SIZE))
            for index, info in enumerate(dataset.coco["images"])]


def _time_pipelines(folder: Path, repeats: int) -> Tuple[Dict[str, List[Tuple[float, float]]],
                                                         Dict[str, Any]]:
    """(wall and CPU seconds of each pass of each pipeline, facts of the pages)."""
    dataset = Dataset.from_folder(folder, split=None, view=View(MIN_SIZE, MAX_SIZE))
    pil_dataset = Dataset.from_folder(folder, split=None, view=View(MIN_SIZE, MAX_SIZE,
                                                                   use_simplejpeg=False))
    items = _page_items(dataset)
    facts = {"megabytes": statistics.mean(dataset.image_path(i).stat().st_size
                                          for i in range(len(dataset))) / 1e6,
             "regions": statistics.mean(len(annotations) for _, annotations, _ in items),
             "size": items[0][2]}
    # what training gets: the items cross from a worker process through shared memory
    # (~34 MB a page: float image and uint8 masks); this process only receives
    worker_loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=collate_fn,
                               persistent_workers=True, prefetch_factor=4)
    pipelines: Dict[str, Callable[[], Any]] = {
        "ours": lambda: _consume(dataset[index] for index in range(len(dataset))),
        "ours, PIL decoding": lambda: _consume(pil_dataset[index]
                                               for index in range(len(pil_dataset))),
        "ours, 1 worker process": lambda: _consume(worker_loader),
        "naive": lambda: _consume(naive_item(path, annotations, height, width)
                                  for path, annotations, (height, width) in items),
    }
    for function in pipelines.values():  # warm up: page cache, allocator, lazy imports
        function()
    timings: Dict[str, List[Tuple[float, float]]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, function in pipelines.items():
            timings[name].append(_timed(function))
    cached = Dataset.from_folder(folder, split=None, view=View(MIN_SIZE, MAX_SIZE, cache=True))
    for index in range(len(cached)):
        cached[index]  # fill the cache
    timings["ours, cached images"] = [_timed(lambda: _consume(cached[i] for i in range(len(cached))))
                                      for _ in range(repeats)]
    del worker_loader  # its worker process ends before the pages are removed
    return timings, facts


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(1)  # what one DataLoader worker gets
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="maskdla-bench-loader-") as temporary:
        print(f"writing {args.pages} synthetic {args.width}px pages ...", flush=True)
        write_pages(Path(temporary), args.pages, args.width)
        timings, facts = _time_pipelines(Path(temporary), args.repeats)
    load_after = os.getloadavg()[0]

    pages = args.pages
    figures = {}
    for name, runs in timings.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        # this thread's CPU time says nothing of the work done in a worker process
        figures[name] = (pages / wall, None if name == "ours, 1 worker process" else pages / cpu)
    print(f"{pages} pages of {args.width}x{round(args.width * 3900 / 2700)} px, "
          f"{facts['megabytes']:.2f} MB JPEG and {facts['regions']:.0f} regions each -> "
          f"training size {facts['size'][1]}x{facts['size'][0]}; {args.repeats} passes, "
          f"medians; 1-min load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"{'pipeline':<22} {'pages/s':>9} {'pages/CPU-s':>12}")
    for name, (per_second, per_cpu_second) in figures.items():
        cpu_text = "-" if per_cpu_second is None else f"{per_cpu_second:.2f}"
        print(f"{name:<22} {per_second:9.2f} {cpu_text:>12}")
    speedup = figures["ours"][0] / figures["naive"][0]
    speedup_cpu = figures["ours"][1] / figures["naive"][1]
    print(f"speedup (ours / naive): {speedup:.1f}x wall clock, {speedup_cpu:.1f}x CPU time")
    return {
        "pages_per_s": round(figures["ours"][0], 2),
        "pages_per_cpu_s": round(figures["ours"][1], 2),
        "pil_decoding_pages_per_s": round(figures["ours, PIL decoding"][0], 2),
        "worker_process_pages_per_s": round(figures["ours, 1 worker process"][0], 2),
        "naive_pages_per_s": round(figures["naive"][0], 2),
        "naive_pages_per_cpu_s": round(figures["naive"][1], 2),
        "cached_pages_per_s": round(figures["ours, cached images"][0], 2),
        "speedup": round(speedup, 2),
        "speedup_cpu": round(speedup_cpu, 2),
        "pages": pages, "repeats": args.repeats, "width": args.width,
        "jpeg_megabytes": round(facts["megabytes"], 2), "regions_per_page": facts["regions"],
        "load_average": [round(load_before, 2), round(load_after, 2)],
    }
