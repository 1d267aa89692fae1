"""YOLOv8n-seg baseline on the same pages, scored by the same code as maskdla.

Not part of maskdla (ultralytics is not a dependency): run it from a virtualenv of its own
that sees the installed torch, e.g.

    python -m venv --system-site-packages /tmp/yolo && /tmp/yolo/bin/pip install ultralytics
    python -m maskdla.convert to-coco ../shared/realdata/htromance/train --out /tmp/h/train.json ...
    /tmp/yolo/bin/python tools/yolo_baseline.py --train /tmp/h/train.json \
        --test /tmp/h/test.json --out /tmp/h/yolo --epochs 4 --imgsz 640
    python -m maskdla.eval --predictions /tmp/h/yolo/results.json --ann /tmp/h/test.json

The model is built from its yaml (``yolov8n-seg.yaml``): no weights are downloaded. The
COCO files name the images relative to themselves (``maskdla.convert`` writes them so) or
take ``--train-images`` / ``--test-images``. Predictions are written as COCO results with
RLE masks at the original resolution; the script prints the CPU-seconds it used (this
process and its workers), for a comparison at equal CPU budget.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def image_folder(coco_path: Path, given: str) -> Path:
    return Path(given) if given else coco_path.parent


def write_split(coco_path: Path, images_dir: Path, root: Path, split: str,
                category_index: Dict[int, int]) -> List[dict]:
    """COCO polygons -> YOLO segmentation labels (class x1 y1 x2 y2 ..., normalised)."""
    coco = json.loads(coco_path.read_text())
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    by_image: Dict[int, List[dict]] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image in coco["images"]:
        source = (images_dir / image["file_name"]).resolve()
        link = root / "images" / split / Path(image["file_name"]).name
        if not link.exists():
            link.symlink_to(source)
        lines = []
        for annotation in by_image.get(image["id"], []):
            for polygon in annotation["segmentation"]:
                coords = [f"{value / (image['width'] if i % 2 == 0 else image['height']):.6f}"
                          for i, value in enumerate(polygon)]
                lines.append(" ".join([str(category_index[annotation["category_id"]])] + coords))
        (root / "labels" / split / f"{link.stem}.txt").write_text("\n".join(lines) + "\n")
    return coco["images"]


def predict(model, images: List[dict], images_dir: Path, category_ids: List[int],
            imgsz: int, device: str) -> List[dict]:
    """Every test image -> COCO results (bbox xywh, RLE mask at the original size)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    results = []
    for image in images:
        source = str((images_dir / image["file_name"]).resolve())
        output = model.predict(source, imgsz=imgsz, conf=0.001, max_det=100, device=device,
                               retina_masks=True, verbose=False)[0]
        if output.masks is None:
            continue
        masks = output.masks.data.cpu().numpy() > 0.5
        for box, label, score, mask in zip(output.boxes.xyxy.tolist(), output.boxes.cls.tolist(),
                                           output.boxes.conf.tolist(), masks):
            mask = np.asfortranarray(mask[:image["height"], :image["width"]].astype(np.uint8))
            rle = mask_utils.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = box
            results.append({"image_id": image["id"], "category_id": category_ids[int(label)],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
                            "segmentation": rle})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, type=Path, help="COCO ground truth, train")
    parser.add_argument("--test", required=True, type=Path, help="COCO ground truth, test")
    parser.add_argument("--train-images", default="", help="image folder of --train")
    parser.add_argument("--test-images", default="", help="image folder of --test")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from ultralytics import YOLO

    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    categories = json.loads(args.train.read_text())["categories"]
    category_ids = [category["id"] for category in categories]
    index = {category_id: i for i, category_id in enumerate(category_ids)}
    root = args.out / "dataset"
    write_split(args.train, image_folder(args.train, args.train_images), root, "train", index)
    test_images = write_split(args.test, image_folder(args.test, args.test_images), root,
                              "val", index)
    names = "\n".join(f"  {i}: {category['name']}" for i, category in enumerate(categories))
    (root / "data.yaml").write_text(f"path: {root.resolve()}\ntrain: images/train\n"
                                    f"val: images/val\nnames:\n{names}\n")
    model = YOLO("yolov8n-seg.yaml")
    model.train(data=str(root / "data.yaml"), epochs=args.epochs, imgsz=args.imgsz,
                batch=args.batch, workers=args.workers, device=args.device, seed=args.seed,
                pretrained=False, plots=False, val=False, amp=False,
                project=str(args.out.resolve()), name="train", exist_ok=True)
    train_wall, train_cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
    results = predict(model, test_images, image_folder(args.test, args.test_images),
                      category_ids, args.imgsz, args.device)
    (args.out / "results.json").write_text(json.dumps(results))
    summary = {"epochs": args.epochs, "imgsz": args.imgsz, "train_wall_s": round(train_wall, 1),
               "train_cpu_s": round(train_cpu, 1),
               "total_cpu_s": round(cpu_seconds() - start_cpu, 1),
               "results": str(args.out / "results.json"), "detections": len(results)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.exit(main())
