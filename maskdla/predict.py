"""``python -m maskdla.predict``: page images -> PAGE-XML / ALTO (+ overlays, COCO results).

Command line::

    python -m maskdla.predict CHECKPOINT INPUTS... --out DIR [--recursive]
        [--format page|alto|page,alto] [--skip-existing] [--workers N]
        [--engine torch|onnxruntime] [--score-thresh 0.5] [--overlap-thresh 0.5]
        [--no-merge-classes CLASS ...] [--largest-component-only] [--simplify PX]
        [--min-area PX2] [--overlay] [--coco preds.json] [--zip FILE] [--batch-size N]
        [--device D] [--lines LINE_CHECKPOINT] [--baseline-position F] [--line-score-thresh S]
        [--line-max-detections N]

INPUTS are image files or folders (their ``*.jpg *.jpeg *.png *.tif *.tiff``; with
``--recursive`` every subfolder too). The output tree mirrors the input tree: an image
``FOLDER/a/b/x.jpg`` writes ``DIR/a/b/page/x.xml`` (``alto/`` for ALTO, ``overlay/x.jpg``
with ``--overlay``); ``--zip FILE`` also bundles the XML of the one ``--format`` as flat
``STEM.xml`` members, for eScriptorium's import. A page that fails is reported on one line, listed in
``DIR/failures.txt``, and the others go on; ``DIR/manifest.json`` lists every page. The
exit code is 0 when every image went through, 1 when some failed, 2 for a bad
checkpoint, flag or input path (nothing is predicted then). The pipeline per page is
:class:`maskdla.prediction.Predictor`'s (docs/prediction.md); with ``--lines`` a line model
(``--task lines``) adds the text lines, with their baselines, into the regions
(:class:`maskdla.prediction.PagePipeline`); a line model given as CHECKPOINT writes pages
whose lines each sit in a region made for them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from maskdla.cli import non_negative_float, non_negative_int, positive_int, run_main
from maskdla.data.formats import FORMATS, parse_formats
from maskdla.errors import InputError
from maskdla.files import (check_output_folder, read_json, write_bytes_atomic,
                           write_json_atomic, write_zip_atomic)
from maskdla.inference import cpu_supports_bf16, resolve_device
from maskdla.prediction import (IMAGE_SUFFIXES, PagePipeline, PostProcess, Predictor,
                                detections_to_page, page_to_coco_results)
from maskdla.prediction.baselines import BASELINE_POSITION
from maskdla.prediction.collection import (CollectionSettings, InputImage, PageRecord,
                                           find_images, predict_collection, zip_members)
from maskdla.prediction.pipeline import model_task
from maskdla.prediction.engines import ENGINES
from maskdla.zoo import is_shipped

__all__ = ["Predictor", "PostProcess", "PagePipeline", "detections_to_page",
           "page_to_coco_results", "find_images", "IMAGE_SUFFIXES", "main"]

PathLike = Union[str, "os.PathLike[str]"]

#: written into the output folder
MANIFEST, FAILURES = "manifest.json", "failures.txt"
#: --amp: Predictor's ``amp`` (auto: on for CUDA only)
AMP_CHOICES = {"auto": None, "on": True, "off": False}
#: the defaults of the flags (each default lives in its settings class)
POSTPROCESS, COLLECTION = PostProcess(), CollectionSettings()


def _unit_float(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.predict",
        description="Predict the layout regions of page images and write PAGE-XML "
                    "(DIR/page/STEM.xml per image, the input tree mirrored). Exit code 0: "
                    "all images done; 1: some pages failed (reported, listed in "
                    "DIR/failures.txt); 2: bad checkpoint, flag or input path.")
    _add_collection_arguments(parser)
    _add_post_processing_arguments(parser)
    _add_extra_output_arguments(parser)
    _add_line_model_arguments(parser)
    return parser


def _add_collection_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the images, where the outputs go and how the collection is run."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a maskdla checkpoint (.pth) or a shipped model's name "
                             "(segmonto-base; python -m maskdla.models lists them); with "
                             "--engine onnxruntime a model exported by python -m "
                             "maskdla.export (.onnx)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"image files or folders of images ({' '.join(IMAGE_SUFFIXES)})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: DIR/<folders below the input>/page/STEM.xml")
    parser.add_argument("--recursive", action="store_true",
                        help="search the input folders' subfolders too; the output mirrors "
                             "the input tree")
    default_formats = ",".join(COLLECTION.formats)
    parser.add_argument("--format", default=default_formats, metavar="page|alto|page,alto",
                        help=f"what to write, comma-separated: {', '.join(FORMATS)} "
                             f"(default {default_formats}): <mirrored>/page/STEM.xml, "
                             "<mirrored>/alto/STEM.xml")
    parser.add_argument("--skip-existing", action="store_true",
                        help="resume: leave out images whose outputs all exist")
    parser.add_argument("--workers", type=non_negative_int, default=COLLECTION.workers,
                        metavar="N",
                        help=f"DataLoader processes decoding images (default "
                             f"{COLLECTION.workers}; 0: in the main process)")
    parser.add_argument("--engine", choices=list(ENGINES), default="torch",
                        help="torch (a checkpoint) or onnxruntime (an exported .onnx model, "
                             "CPU; pip install 'maskdla[onnx]')")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="threads of the model (torch.set_num_threads, or onnxruntime's "
                             "intra-op threads; default: the library's)")


def _add_post_processing_arguments(parser: argparse.ArgumentParser) -> None:
    """The fields of :class:`~maskdla.prediction.PostProcess`, and ``--max-detections``."""
    parser.add_argument("--score-thresh", type=_unit_float, default=POSTPROCESS.score_thresh,
                        metavar="S",
                        help=f"drop detections scoring below S (default "
                             f"{POSTPROCESS.score_thresh:g})")
    parser.add_argument("--overlap-thresh", type=_unit_float,
                        default=POSTPROCESS.overlap_thresh, metavar="T",
                        help="merge regions whose intersection exceeds T times the smaller "
                             "region's area; the higher-scoring class wins (default "
                             f"{POSTPROCESS.overlap_thresh:g}; 1 disables merging)")
    parser.add_argument("--no-merge-classes", nargs="+", default=[], metavar="CLASS",
                        help="classes never merged with another region, e.g. drop-capital")
    parser.add_argument("--largest-component-only", action="store_true",
                        help="one region per detection: its largest connected component "
                             "(default: every component is a region)")
    parser.add_argument("--simplify", type=non_negative_float, default=POSTPROCESS.tolerance,
                        metavar="PX",
                        help="polygon simplification tolerance in pixels of the original "
                             f"image (default {POSTPROCESS.tolerance:g}; 0 keeps every "
                             "vertex)")
    parser.add_argument("--min-area", type=non_negative_float, default=POSTPROCESS.min_area,
                        metavar="PX2",
                        help="drop components of at most this many square pixels (default "
                             f"{POSTPROCESS.min_area:g})")
    parser.add_argument("--mask-thresh", type=_unit_float, default=POSTPROCESS.mask_thresh,
                        metavar="P",
                        help="mask probability from which a pixel is in a region (default "
                             f"{POSTPROCESS.mask_thresh:g})")
    parser.add_argument("--max-detections", type=positive_int, default=None, metavar="N",
                        help="at most N detections per image (default: the model's, 100)")


def _add_extra_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Overlays, COCO results, the ZIP bundle; the batch size and the device."""
    parser.add_argument("--overlay", action="store_true",
                        help="also draw the regions over each image: DIR/overlay/STEM.jpg")
    parser.add_argument("--coco", metavar="JSON",
                        help="also write all regions as COCO results (bbox + RLE segmentation; "
                             "image ids in input order from 1, with file_name)")
    parser.add_argument("--zip", metavar="FILE",
                        help="also bundle the written XML of the one --format (page or alto) "
                             "as flat STEM.xml members: eScriptorium's Import > "
                             "Transcription (XML)")
    parser.add_argument("--batch-size", type=positive_int, default=COLLECTION.batch_size,
                        metavar="N",
                        help=f"images per model batch (default {COLLECTION.batch_size})")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="autocast of the backbone and RPN (fp16 on CUDA, bf16 on a CPU with "
                             "bfloat16 kernels; the RoI heads stay fp32): auto (default) is on "
                             "for CUDA and off on the CPU, where it is 1.5-1.7x faster but "
                             "gives slightly different masks")


def _add_line_model_arguments(parser: argparse.ArgumentParser) -> None:
    lines = parser.add_argument_group(
        "text lines", "a line model (python -m maskdla.train --task lines) adds text lines "
        "with baselines into the regions; a line model given as CHECKPOINT alone puts each "
        "line into a region made for it (and takes --score-thresh, --max-detections)")
    lines.add_argument("--lines", metavar="LINE_CHECKPOINT",
                       help="the line model (a checkpoint, a shipped model's name, or with "
                            "--engine onnxruntime an exported .onnx); it sees pages at its "
                            "own size")
    lines.add_argument("--baseline-position", type=_unit_float, default=BASELINE_POSITION,
                       metavar="F",
                       help="where the baseline lies in a line polygon, as the fraction of "
                            f"its height above its lower edge (default {BASELINE_POSITION})")
    lines.add_argument("--line-score-thresh", type=_unit_float, default=None, metavar="S",
                       help="drop line detections scoring below S (default: --score-thresh)")
    lines.add_argument("--line-max-detections", type=positive_int, default=None, metavar="N",
                       help="at most N lines per image (default: the line model's)")


def build_pipeline(args: argparse.Namespace) -> PagePipeline:
    """The models the flags name: CHECKPOINT (regions, or lines alone) and ``--lines``."""
    if (args.amp == "on" and args.engine == "torch" and not cpu_supports_bf16()
            and resolve_device(args.device).type == "cpu"):
        raise InputError("--amp on: this CPU has no bfloat16 kernels (AVX-512 BF16 or AMX), "
                         "where bf16 is emulated and slower; use --amp off")
    postprocess = PostProcess(
        score_thresh=args.score_thresh, mask_thresh=args.mask_thresh,
        overlap_thresh=args.overlap_thresh, no_merge_classes=args.no_merge_classes,
        tolerance=args.simplify, min_area=args.min_area,
        largest_only=args.largest_component_only)
    first = Predictor(args.checkpoint, device=args.device, postprocess=postprocess,
                      max_detections=args.max_detections, engine=args.engine,
                      threads=args.threads, amp=AMP_CHOICES[args.amp])
    if args.lines is None:
        regions, lines = (None, first) if model_task(first) == "lines" else (first, None)
        return PagePipeline(regions, lines, baseline_position=args.baseline_position)
    line_score = args.score_thresh if args.line_score_thresh is None else args.line_score_thresh
    line_postprocess = PostProcess(score_thresh=line_score, mask_thresh=args.mask_thresh,
                                   tolerance=args.simplify)
    lines = Predictor(args.lines, device=args.device, postprocess=line_postprocess,
                      max_detections=args.line_max_detections, engine=args.engine,
                      threads=args.threads, amp=AMP_CHOICES[args.amp])
    return PagePipeline(first, lines, baseline_position=args.baseline_position)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    formats = parse_formats(args.format)
    out = Path(args.out)
    images = find_images(args.inputs, recursive=args.recursive, exclude=out)
    if args.coco and Path(args.coco).is_dir():
        raise InputError("--coco must name a file, not a folder", args.coco)
    members = check_zip(args.zip, formats, images, out) if args.zip else []
    if args.threads and args.engine == "torch":
        import torch

        torch.set_num_threads(args.threads)
    predictor = build_pipeline(args)
    if args.coco and predictor.regions is None:
        raise InputError("--coco writes a region model's detections; this run has a line "
                         "model only")
    # only now: a bad checkpoint leaves no empty output folder behind
    prepare_output_folder(out)
    coco_results: Optional[List[dict]] = [] if args.coco else None
    start = time.perf_counter()
    settings = CollectionSettings(formats=formats, batch_size=args.batch_size,
                                  workers=args.workers, skip_existing=args.skip_existing,
                                  overlay=args.overlay)
    records = predict_collection(predictor, images, out, settings, coco=coco_results)
    seconds = time.perf_counter() - start
    if coco_results is not None:
        write_json_atomic(args.coco, coco_results)
    failed = [record for record in records if record.status == "failed"]
    _write_failures(out / FAILURES, failed)
    _write_manifest(out / MANIFEST, predictor, args, formats, records, seconds)
    if args.zip:
        write_bundle(args.zip, members, images, records, formats[0])
    print(summary_line(records, seconds, out), file=sys.stderr)
    return 1 if failed else 0


def check_zip(zip_path: str, formats: Sequence[str], images: Sequence[InputImage],
              out: Path) -> List[Tuple[str, Path]]:
    """``--zip``'s members (:func:`~maskdla.prediction.collection.zip_members`), checked
    before any model loads: one format, a file (not a folder) maskdla can write."""
    if len(formats) != 1:
        raise InputError(f"--zip bundles one format; give --format page or --format alto, "
                         f"not {','.join(formats)}")
    if Path(zip_path).is_dir():
        raise InputError("--zip must name a file, not a folder", zip_path)
    check_output_folder(Path(zip_path).absolute().parent, "--zip")
    return zip_members(images, out, formats[0], zip_path)


def write_bundle(zip_path: str, members: Sequence[Tuple[str, Path]],
                 images: Sequence[InputImage], records: Sequence[PageRecord],
                 kind: str) -> None:
    """Write ``--zip`` atomically: the member of every image not failed (predicted now, or
    skipped as finished), one stderr line saying how many."""
    status = {record.file: record.status for record in records}
    bundled = [member for member, image in zip(members, images)
               if status.get(str(image.path)) != "failed"]
    write_zip_atomic(zip_path, bundled)
    print(f"maskdla: wrote {len(bundled)} {FORMATS[kind].title} files "
          f"to {zip_path}", file=sys.stderr)


def prepare_output_folder(out: Path) -> None:
    """Create ``out`` once it is known to be writable: one line now for a file, a
    read-only folder or disk, rather than every page failing on its own."""
    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out: cannot create the output folder ({error.strerror or error})",
                         out) from None


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name} {number}" for name, number in sorted(counter.items())) or "none"


def summary_line(records: Sequence[PageRecord], seconds: float, out: Path) -> str:
    """The run in one line: pages, regions per class, failures, pages/s; with a line
    model also lines per class, the line detections dropped (by reason) and the regions
    made for lines outside every region."""
    count = Counter(record.status for record in records)
    classes: Counter = Counter()
    line_classes: Counter = Counter()
    dropped: Counter = Counter()
    for record in records:
        classes.update(record.classes)
        line_classes.update(record.line_classes)
        dropped.update(record.dropped)
    rate = count["predicted"] / seconds if seconds > 0 else 0.0
    lines = ""
    if any(record.lines is not None for record in records):
        made = sum(record.generated or 0 for record in records)
        lines = (f"; {sum(line_classes.values())} lines ({_counts(line_classes)}), "
                 f"{sum(dropped.values())} dropped ({_counts(dropped)}), "
                 f"{made} regions made for lines outside every region")
    return (f"{len(records)} pages -> {out}: {count['predicted']} predicted, "
            f"{count['skipped']} skipped, {count['failed']} failed; "
            f"{sum(classes.values())} regions ({_counts(classes)}){lines}; {rate:.2f} pages/s")


def _write_failures(path: Path, failed: Sequence[PageRecord]) -> None:
    """One line per failed page (``PATH: problem``); no file when nothing failed (an old
    one from a run being resumed is removed: its pages were tried again)."""
    if failed:
        write_bytes_atomic(path, "".join(f"{record.error}\n" for record in failed)
                           .encode("utf-8"))
    else:
        path.unlink(missing_ok=True)


def _write_manifest(path: Path, predictor: PagePipeline, args: argparse.Namespace,
                    formats: Sequence[str], records: Sequence[PageRecord],
                    seconds: float) -> None:
    """manifest.json: the checkpoint(s), the settings and every page (a skipped page keeps
    the regions, lines and seconds an earlier run's manifest recorded for it)."""
    earlier = {}
    if args.skip_existing and path.is_file():
        try:
            # a page skipped then carries the figures of the run that predicted it, so a
            # second resume keeps them too
            earlier = {page["file"]: page for page in read_json(path, "manifest")["pages"]
                       if page.get("status") == "predicted"
                       or (page.get("status") == "skipped" and page.get("regions") is not None)}
        except (InputError, KeyError, TypeError):
            earlier = {}  # an unreadable old manifest only costs the old figures
    with_lines = predictor.lines is not None
    line_keys = ("lines", "dropped", "generated") if with_lines else ()
    pages = []
    for record in records:
        entry = {"file": record.file, "status": record.status, "regions": record.regions,
                 "seconds": record.seconds}
        if with_lines:
            entry.update(lines=record.lines, dropped=record.dropped, generated=record.generated)
        if record.status == "skipped" and record.file in earlier:
            entry.update({key: earlier[record.file].get(key)
                          for key in ("regions", "seconds", *line_keys)})
        if record.error:
            entry["error"] = record.error
        pages.append(entry)
    settings = {key: value for key, value in vars(args).items()
                if key not in ("checkpoint", "inputs", "lines")}
    manifest = {
        "checkpoint": _checkpoint_name(args.checkpoint), "engine": args.engine,
        "classes": predictor.classes, "inputs": [str(Path(item).resolve()) for item in args.inputs],
        "formats": list(formats), "settings": settings, "seconds": round(seconds, 3),
        "pages": pages}
    if with_lines:
        manifest.update(lines_checkpoint=_checkpoint_name(args.lines or args.checkpoint),
                        line_classes=predictor.line_classes,
                        orphan_label=predictor.orphan_label)
    write_json_atomic(path, manifest)


def _checkpoint_name(checkpoint: str) -> str:
    """A shipped model's name as given, a file as its absolute path."""
    return checkpoint if is_shipped(checkpoint) else str(Path(checkpoint).resolve())


if __name__ == "__main__":
    run_main(main)
