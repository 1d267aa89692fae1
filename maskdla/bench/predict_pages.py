"""``python -m maskdla.bench predict-pages``: pages/s of the whole ``maskdla.predict``
command on a folder of full-size JPEG scans, against the model's forward alone.

Synthetic scans (2,700 x 3,900 px by default: paper, dark staff and lyrics bands, drop
capitals, noise; JPEG quality 90) are written to a temporary folder; the model is a
random-initialised checkpoint of ``--backbone`` at the training size 800 / 1333, with
``--score-thresh 0``, ``--max-detections 25`` and ``--largest-component-only`` so that
every page has 25 regions to trace and write, as a trained model's manuscript page has
(an untrained mask head's maps fall apart into hundreds of specks otherwise). Timed, interleaved over
``--repeats`` rounds (medians):

* ``forward``: the engine alone (:meth:`maskdla.prediction.Predictor.detect`) on the same
  pages, decoded beforehand, in the same batches: the ceiling;
* ``command --workers N``: ``maskdla.predict.main`` on the folder, everything included
  (checkpoint load, decoding in N DataLoader workers, post-processing, PAGE files,
  manifest).

The ratio ``command / forward`` (seconds) is the figure of the target: at most 1.10 with
2 workers. ``--engines torch,onnxruntime`` also runs the exported ONNX model.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image, ImageDraw

DESCRIPTION = ("pages/s of python -m maskdla.predict on full-size JPEG scans vs the model's "
               "forward alone")

CLASSES = ["drop-capital", "lyrics", "staff"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=int, default=6, help="scans in the folder (default 6)")
    parser.add_argument("--height", type=int, default=3900, help="scan height (default 3900)")
    parser.add_argument("--width", type=int, default=2700, help="scan width (default 2700)")
    parser.add_argument("--backbone", default="vovnet19slim", help="model (default vovnet19slim)")
    parser.add_argument("--batch-size", type=int, default=2, help="model batch (default 2)")
    parser.add_argument("--workers", default="0,2",
                        help="comma-separated --workers settings of the command (default 0,2)")
    parser.add_argument("--engines", default="torch",
                        help="comma-separated engines: torch, onnxruntime (default torch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")


def synthetic_scan(path: Path, height: int, width: int, seed: int) -> None:
    """A manuscript-like page as JPEG: paper with noise, staff and lyrics bands, capitals."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.normal(215, 10, (height // 8, width // 8, 3))
                             .clip(0, 255)).astype(np.uint8)).resize((width, height))
    draw = ImageDraw.Draw(small)
    margin, row = width // 12, height // 9
    for number in range(8):
        top = margin + number * row
        for line in range(5):  # a staff: five lines
            y = top + line * row // 12
            draw.line([(margin + width // 10, y), (width - margin, y)], fill=(40, 30, 30),
                      width=6)
        for x in range(margin + width // 10, width - margin, 90):  # lyrics: word blobs
            draw.rectangle([x, top + row // 2, x + 60, top + row // 2 + 50], fill=(50, 40, 35))
        if number % 3 == 0:
            draw.ellipse([margin, top, margin + width // 12, top + row // 2], fill=(120, 20, 20))
    small.save(path, quality=90)


def _checkpoint(folder: Path, backbone: str) -> Path:
    from maskdla.model import build_model

    torch.manual_seed(0)
    model = build_model(backbone, len(CLASSES) + 1, min_size=800, max_size=1333)
    config = {"backbone": backbone, "norm": None, "min_size": [800], "max_size": 1333,
              "classes": CLASSES}
    path = folder / "model.pth"
    torch.save({"model": model.state_dict(), "config": config, "classes": CLASSES}, path)
    return path


def run(args: argparse.Namespace) -> dict:
    from maskdla.export import export_onnx
    from maskdla.predict import Predictor, main
    from maskdla.prediction import PostProcess, load_image

    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    workers = [int(value) for value in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        scans = folder / "scans"
        scans.mkdir()
        for number in range(args.pages):
            synthetic_scan(scans / f"folio_{number:03d}.jpg", args.height, args.width, number)
        checkpoints = {"torch": _checkpoint(folder, args.backbone)}
        if "onnxruntime" in engines:
            checkpoints["onnxruntime"] = folder / "model.onnx"
            export_onnx(checkpoints["torch"], checkpoints["onnxruntime"], score_thresh=0.0,
                        max_detections=25)
        paths = sorted(scans.iterdir())
        predictors = {engine: Predictor(checkpoints[engine], device="cpu",
                                        postprocess=PostProcess(score_thresh=0.0,
                                                                largest_only=True),
                                        max_detections=25, engine=engine)
                      for engine in engines}
        any_predictor = next(iter(predictors.values()))
        start = time.perf_counter()
        loaded = [load_image(path, any_predictor.min_size, any_predictor.max_size)
                  for path in paths]
        decode_seconds = (time.perf_counter() - start) / len(paths)
        decoded = [image for image, _, _ in loaded]
        batches = [decoded[i:i + args.batch_size]
                   for i in range(0, len(decoded), args.batch_size)]
        times: Dict[str, List[float]] = {}
        for engine in engines:  # warm-up: first calls allocate
            predictors[engine].detect(batches[0])
        post_seconds = _post_processing_seconds(predictors[engines[0]], decoded, loaded,
                                                folder / "post")
        for _ in range(args.repeats):
            for engine in engines:
                start = time.perf_counter()
                for batch in batches:
                    predictors[engine].detect(batch)
                times.setdefault(f"{engine} forward", []).append(time.perf_counter() - start)
                for count in workers:
                    out = folder / f"out_{engine}_{count}"
                    start = time.perf_counter()
                    main([str(checkpoints[engine]), str(scans), "--out", str(out),
                          "--engine", engine, "--workers", str(count), "--batch-size",
                          str(args.batch_size), "--score-thresh", "0", "--max-detections",
                          "25", "--largest-component-only", "--device", "cpu"])
                    times.setdefault(f"{engine} command --workers {count}", []).append(
                        time.perf_counter() - start)
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"{args.pages} scans {args.width} x {args.height} px JPEG, {args.backbone} "
          f"(random init) at 800/1333, batch {args.batch_size}, 25 regions a page, "
          f"median of {args.repeats} interleaved rounds")
    print(f"{'run':<36}{'s':>8}{'pages/s':>9}{'vs forward':>12}")
    result: Dict[str, object] = {"pages": args.pages, "backbone": args.backbone,
                                 "repeats": args.repeats, "page": f"{args.width}x{args.height}",
                                 "decode s/page": decode_seconds,
                                 "post-processing s/page": post_seconds}
    print(f"{'decode one scan (main process)':<36}{decode_seconds:>8.3f}")
    print(f"{'post-process + write one page':<36}{post_seconds:>8.3f}")
    for key, seconds in medians.items():
        engine = key.split()[0]
        ratio = seconds / medians[f"{engine} forward"]
        print(f"{key:<36}{seconds:>8.2f}{args.pages / seconds:>9.3f}{ratio:>12.3f}")
        result[f"{key} s"] = seconds
        result[f"{key} pages/s"] = args.pages / seconds
        result[f"{key} ratio"] = ratio
    return result


def _post_processing_seconds(predictor, decoded: List[torch.Tensor], loaded: list,
                             folder: Path) -> float:
    """Median seconds of masks -> polygons -> PAGE file for one page of the run."""
    from maskdla.data.pagexml import write_page

    seconds = []
    for image, (_, original, name) in zip(decoded, loaded):
        detection = predictor.detect([image])[0]
        start = time.perf_counter()
        page = predictor.to_page(detection, tuple(image.shape[-2:]), original, name)
        write_page(page, folder / "page" / f"{Path(name).stem}.xml")
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)
