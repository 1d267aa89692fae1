"""Prediction over a collection: nested folders of scans, resumable, decoded in workers.

* :func:`find_images` lists the images of files and folders (``recursive``: the whole
  tree), each with its place in the output tree (its path below the input folder);
* :class:`PageImages` decodes them in DataLoader workers (a failed decode is a record,
  not an exception, so one broken scan never stops the loader), at each model's size;
* :func:`predict_collection` runs the model (or the region and line models of a
  :class:`~maskdla.prediction.pipeline.PagePipeline`) batch by batch, writes each page
  in the formats of :data:`maskdla.data.formats.FORMATS`
  (``OUT/<mirrored folders>/page/STEM.xml``, ``.../alto/``), skips finished pages on request and records every page for the
  manifest (regions, lines and the line detections dropped, by reason).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from maskdla.data.formats import FORMATS
from maskdla.data.layout import read_layout
from maskdla.errors import InputError
from maskdla.files import remove_stale_temporaries
from maskdla.prediction.overlay import save_overlay
from maskdla.prediction.pipeline import (ModelDetections, PagePipeline, PredictedPage, Size,
                                         model_task)
from maskdla.prediction.predictor import (IMAGE_SUFFIXES, Predictor, load_image,
                                          page_to_coco_results)

__all__ = ["InputImage", "find_images", "PageImages", "LoadedPage", "collate_pages",
           "zip_members", "PageRecord", "as_pipeline", "CollectionSettings",
           "predict_collection"]

PathLike = Union[str, "os.PathLike[str]"]


class InputImage(NamedTuple):
    """An image to predict and its place in the output tree.

    Attributes:
        path: the image file.
        relative: its path below the input folder it was found in (its name for an image
            named directly); the outputs go to ``OUT / relative.parent / KIND / STEM``.
    """

    path: Path
    relative: Path

    def output(self, out: Path, kind: str, suffix: str = ".xml") -> Path:
        """Where this image's output of ``kind`` (``page``, ``alto``, ``overlay``) goes."""
        return out / self.relative.parent / kind / f"{self.relative.stem}{suffix}"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


#: the folders maskdla writes a page's outputs into (:meth:`InputImage.output`)
OUTPUT_FOLDERS = frozenset([*(layout.folder for layout in FORMATS.values()), "overlay"])


def _written_below(path: Path, out: Path) -> bool:
    """Whether ``path`` lies in one of the output folders below ``out`` (resolved)."""
    try:
        relative = path.resolve().relative_to(out)
    except ValueError:
        return False
    return any(part in OUTPUT_FOLDERS for part in relative.parts[:-1])


def find_images(inputs: Sequence[PathLike], recursive: bool = False,
                exclude: Optional[PathLike] = None) -> List[InputImage]:
    """Image files named or inside the folders named, in the given order, each folder
    sorted by relative path; ``recursive`` searches every subfolder too (hidden ones
    excepted). What maskdla writes below ``exclude`` (the output folder: its ``page/``,
    ``alto/`` and ``overlay/`` folders at any depth) is left out, so ``--out`` may be the
    input folder itself (Transkribus's layout: the images, and ``page/`` beside them).

    Raises:
        InputError: a path that does not exist, a folder without images, a file that is
            not an image by its suffix, or two images that would write the same output.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    images: List[InputImage] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = item.rglob("*") if recursive else item.iterdir()
            found = []
            for path in candidates:
                relative = path.relative_to(item)
                if (any(part.startswith(".") for part in relative.parts) or not _is_image(path)
                        or (skip is not None and _written_below(path, skip))):
                    continue
                found.append(InputImage(path, relative))
            if not found:
                where = "this folder or below" if recursive else "this folder"
                raise InputError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {where}", item)
            images.extend(sorted(found, key=lambda image: image.relative.as_posix()))
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"not an image file (expected {' '.join(IMAGE_SUFFIXES)})",
                                 item)
            images.append(InputImage(item, Path(item.name)))
        else:
            raise InputError("no such file or folder", item)
    unique: Dict[Path, InputImage] = {}
    for image in images:  # a file found twice (a folder and a file in it) counts once
        unique.setdefault(image.path.resolve(), image)
    images = list(unique.values())
    seen: Dict[Path, Path] = {}
    for image in images:
        key = image.relative.parent / image.relative.stem
        if key in seen:
            raise InputError(f"same output name {image.relative.parent / 'page' / key.name}.xml "
                             f"as {seen[key]}", image.path)
        seen[key] = image.path
    return images


# --------------------------------------------------------------------------------------
# Decoding in DataLoader workers


class LoadedPage(NamedTuple):
    """One decoded image, or why it could not be decoded.

    Attributes:
        index: its position in the list of images.
        image: Float[3, h, w] in [0, 1] at the (first) model's size (None when it failed).
        original: (H0, W0) displayed size of the file.
        name: the file name (PAGE's imageFilename).
        error: the one-line problem, None when decoded.
        seconds: the time decoding took (in its worker).
        more: the image at each further size of :class:`PageImages` (a second model's).
    """

    index: int
    image: Optional[torch.Tensor]
    original: Tuple[int, int]
    name: str
    error: Optional[str]
    seconds: float
    more: Tuple[torch.Tensor, ...] = ()

    @property
    def views(self) -> List[torch.Tensor]:
        """The image at every size, in the order of the sizes."""
        return [self.image, *self.more] if self.image is not None else []


class PageImages(torch.utils.data.Dataset):
    """Image files decoded at the model's size (:func:`maskdla.prediction.load_image`).

    An item is a :class:`LoadedPage`; an image that cannot be decoded gives one with
    ``error`` set instead of raising, so that the DataLoader goes on. ``more_sizes``
    ((min_size, max_size) of further models) are decoded too, each from the file, so that
    every model sees the very pixels it was trained on.
    """

    def __init__(self, paths: Sequence[Path], min_size: int, max_size: int,
                 more_sizes: Sequence[Size] = ()):
        self.paths, self.min_size, self.max_size = list(paths), min_size, max_size
        self.more_sizes = [tuple(size) for size in more_sizes]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> LoadedPage:
        path = self.paths[index]
        start = time.perf_counter()
        more: Tuple[torch.Tensor, ...] = ()
        try:
            image, original, name = load_image(path, self.min_size, self.max_size)
            more = tuple(load_image(path, *size)[0] for size in self.more_sizes)
            error = None
        except InputError as failure:
            image, original, name, error = None, (0, 0), path.name, str(failure)
        except Exception as failure:  # a decoder's own error type: still one page's problem
            image, original, name = None, (0, 0), path.name
            error = f"{path}: cannot read the image ({type(failure).__name__}: {failure})"
        return LoadedPage(index, image, original, name, error, time.perf_counter() - start,
                          more if error is None else ())


def collate_pages(batch: List[LoadedPage]) -> List[LoadedPage]:
    """DataLoader collate of :class:`PageImages`: pages differ in size, so a batch stays a
    list (the model's transform pads them into one tensor)."""
    return batch


# --------------------------------------------------------------------------------------
# Writers


def zip_members(images: Sequence[InputImage], out: Path, kind: str,
                zip_path: PathLike) -> List[Tuple[str, Path]]:
    """(member name, written file) of each image for ``--zip``: the flat ``STEM.xml``
    eScriptorium matches to its image, and the image's output of ``kind`` below ``out``.

    Raises:
        InputError: two images of one stem (in different folders), naming both: their
            members would overwrite each other.
    """
    members: Dict[str, InputImage] = {}
    for image in images:
        name = f"{image.relative.stem}.xml"
        if name in members:
            raise InputError(f"--zip: {members[name].path} and {image.path} would both be "
                             f"the member {name} (eScriptorium matches files by name); "
                             "rename one or predict the folders into separate bundles",
                             zip_path)
        members[name] = image
    return [(name, image.output(out, kind)) for name, image in members.items()]


# --------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class PageRecord:
    """One image of the run, as the manifest lists it (``lines``, ``line_classes``,
    ``dropped`` and ``generated`` with a line model only)."""

    file: str
    status: str  # predicted, skipped (finished before) or failed
    regions: Optional[int] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    classes: Dict[str, int] = dataclasses.field(default_factory=dict)
    lines: Optional[int] = None
    line_classes: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: line detections not on the page, by reason
    dropped: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: regions made for lines outside every region
    generated: Optional[int] = None


def as_pipeline(predictor: Union[Predictor, PagePipeline]) -> PagePipeline:
    """A pipeline as given, or one of a single Predictor: its model's regions, or, for a
    line model, its lines each in a made region."""
    if isinstance(predictor, PagePipeline):
        return predictor
    if model_task(predictor) == "lines":
        return PagePipeline(lines=predictor)
    return PagePipeline(regions=predictor)


def _predicted_record(image: InputImage, result: PredictedPage, seconds: float,
                      has_lines: bool) -> PageRecord:
    page = result.page
    record = PageRecord(str(image.path), "predicted", len(page.regions), round(seconds, 4),
                        classes=dict(Counter(region.label for region in page.regions)))
    if has_lines:
        record.lines = len(page.lines)
        record.line_classes = dict(Counter(line.label for line in page.lines))
        record.dropped, record.generated = dict(result.dropped), result.generated
    return record


@dataclasses.dataclass(frozen=True)
class CollectionSettings:
    """How :func:`predict_collection` goes through a collection, each default here (also
    those of ``python -m maskdla.predict``'s flags).

    Attributes:
        formats: names of :data:`maskdla.data.formats.FORMATS` (any sequence, kept as a
            tuple).
        batch_size: images per model batch.
        workers: DataLoader worker processes decoding the images (0: in this process).
        skip_existing: an image whose outputs all exist is not predicted again (files are
            written atomically, so an existing file is a complete one).
        overlay: also draw ``<mirrored>/overlay/STEM.jpg``.
        progress: a progress bar on stderr.
    """

    formats: Tuple[str, ...] = ("page",)
    batch_size: int = 2
    workers: int = 2
    skip_existing: bool = False
    overlay: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))


def predict_collection(predictor: Union[Predictor, PagePipeline], images: Sequence[InputImage],
                       out: Path, settings: CollectionSettings = CollectionSettings(), *,
                       coco: Optional[List[dict]] = None) -> List[PageRecord]:
    """Predict every image and write its outputs; returns one record per image.

    Args:
        predictor: the model and post-processing settings (a Predictor, or a
            :class:`~maskdla.prediction.pipeline.PagePipeline` of a region and a line
            model; see :func:`as_pipeline`).
        images: from :func:`find_images`.
        out: the output root (the input tree is mirrored below it).
        settings: formats, batch size, workers, resuming, overlays, progress bar
            (:class:`CollectionSettings`).
        coco: when a list, COCO results of every page are appended to it (image ids: the
            position in ``images`` from 1; a skipped page's are read back from its file in
            the first of ``settings.formats``); only detected regions, not those made for
            lines.

    A page that fails (decoding, model, post-processing or writing) is recorded as failed
    with its one-line error and reported on stderr; the others go on. Temporary files of
    an earlier run killed mid-write are removed first
    (:func:`maskdla.files.remove_stale_temporaries`).
    """
    pipeline = as_pipeline(predictor)
    stale = remove_stale_temporaries(out)  # what a killed run (kill -9) left half-written
    if stale:
        print(f"maskdla: {out}: removed {stale} temporary file{'s' if stale > 1 else ''} an "
              "interrupted run left", file=sys.stderr)
    return _CollectionRun(pipeline, images, out, settings, coco).run()


class _CollectionRun:
    """One :func:`predict_collection`: the records so far, the progress bar and the pages
    being post-processed."""

    def __init__(self, pipeline: PagePipeline, images: Sequence[InputImage], out: Path,
                 settings: CollectionSettings, coco: Optional[List[dict]]):
        self.pipeline, self.images, self.out = pipeline, images, out
        self.settings, self.coco = settings, coco
        self.records: List[Optional[PageRecord]] = [None] * len(images)
        #: indices of the images to predict (the others were finished before)
        self.todo = self._skip_finished()
        self.bar = tqdm(total=len(self.todo), unit="page", desc="predict", file=sys.stderr,
                        disable=not settings.progress)
        self.pending: List[Tuple[int, LoadedPage, float, "concurrent.futures.Future"]] = []

    def _skip_finished(self) -> List[int]:
        """Record the images finished before as skipped (``skip_existing``), their COCO
        results read back; the indices of the others."""
        settings, todo = self.settings, []
        for index, image in enumerate(self.images):
            if settings.skip_existing and _finished(image, self.out, settings.formats,
                                                    settings.overlay):
                self.records[index] = PageRecord(str(image.path), "skipped")
                if self.coco is not None:
                    self.coco.extend(_coco_of_written(
                        image.output(self.out, FORMATS[settings.formats[0]].folder),
                        index + 1, self.pipeline.classes))
            else:
                todo.append(index)
        return todo

    def run(self) -> List[PageRecord]:
        pipeline, settings, workers = self.pipeline, self.settings, self.settings.workers
        loader = torch.utils.data.DataLoader(
            PageImages([self.images[index].path for index in self.todo], *pipeline.sizes[0],
                       more_sizes=pipeline.sizes[1:]),
            batch_size=settings.batch_size, num_workers=workers, collate_fn=collate_pages,
            pin_memory=pipeline.device.type == "cuda", prefetch_factor=2 if workers else None)
        # post-processing runs in a thread while the model runs the next batch (a GPU would
        # otherwise wait for it); one thread keeps the pages' files in order
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as post:
            for batch in loader:
                self._run_batch(post, batch)
            self._finish(len(self.pending))
        self.bar.close()
        return [record for record in self.records if record is not None]

    def _fail(self, index: int, error: str, seconds: float = 0.0) -> None:
        self.records[index] = PageRecord(str(self.images[index].path), "failed",
                                         seconds=seconds, error=error)
        self.bar.write(f"maskdla: failed: {error}", file=sys.stderr)

    def _run_batch(self, post: concurrent.futures.ThreadPoolExecutor,
                   batch: List[LoadedPage]) -> None:
        """Run the model on a batch's decoded pages and hand them to ``post``; collect the
        pages of the batch before."""
        todo, images = self.todo, self.images
        for loaded in batch:
            if loaded.error is not None:
                self._fail(todo[loaded.index], loaded.error, loaded.seconds)
                self.bar.update(1)
        batch = [loaded for loaded in batch if loaded.error is None]
        start = time.perf_counter()
        try:
            detections = self.pipeline.detect([loaded.views for loaded in batch])
        except Exception as error:  # e.g. out of memory on a huge page: this batch only
            for loaded in batch:
                path = images[todo[loaded.index]].path
                self._fail(todo[loaded.index], f"{path}: the model failed "
                                               f"({type(error).__name__}: {error})"
                                               .splitlines()[0])
            self.bar.update(len(batch))
            return
        model_share = (time.perf_counter() - start) / max(len(batch), 1)
        previous = len(self.pending)
        for loaded, detection in zip(batch, detections):
            index = todo[loaded.index]
            self.pending.append((index, loaded, model_share, post.submit(
                _post_process, self.pipeline, images[index], loaded, detection, self.out,
                self.settings.formats, self.settings.overlay)))
        self._finish(previous)

    def _finish(self, count: int) -> None:
        """Collect the first ``count`` pages being post-processed, in order."""
        pipeline = self.pipeline
        for index, loaded, model_share, future in self.pending[:count]:
            error, result, seconds = future.result()
            seconds += loaded.seconds + model_share
            if error is not None:
                self._fail(index, error, seconds)
            else:
                self.records[index] = _predicted_record(self.images[index], result, seconds,
                                                        pipeline.lines is not None)
                if self.coco is not None:
                    self.coco.extend(page_to_coco_results(result.page, index + 1,
                                                          pipeline.classes))
            self.bar.update(1)
        del self.pending[:count]


def _post_process(pipeline: PagePipeline, image: InputImage, loaded: LoadedPage,
                  detection: Dict[str, ModelDetections], out: Path, formats: Sequence[str],
                  overlay: bool) -> Tuple[Optional[str], Optional[PredictedPage], float]:
    """:func:`_write_outputs` -> (one-line error or None, the predicted page, seconds);
    never raises."""
    start = time.perf_counter()
    try:
        result = _write_outputs(pipeline, image, loaded, detection, out, formats, overlay)
    except Exception as error:
        message = str(error) if isinstance(error, InputError) else (
            f"{image.path}: {type(error).__name__}: {error}")
        return message.splitlines()[0], None, time.perf_counter() - start
    return None, result, time.perf_counter() - start


def _outputs(image: InputImage, out: Path, formats: Sequence[str], overlay: bool
             ) -> List[Path]:
    paths = [image.output(out, FORMATS[kind].folder) for kind in formats]
    return paths + ([image.output(out, "overlay", ".jpg")] if overlay else [])


def _finished(image: InputImage, out: Path, formats: Sequence[str], overlay: bool) -> bool:
    return all(path.is_file() for path in _outputs(image, out, formats, overlay))


def _write_outputs(pipeline: PagePipeline, image: InputImage, loaded: LoadedPage,
                   detection: Dict[str, ModelDetections], out: Path, formats: Sequence[str],
                   overlay: bool) -> PredictedPage:
    """Post-process one page and write its files; the overlay last, so that a page whose
    files all exist is a finished page."""
    result = pipeline.to_result(detection, loaded.original, loaded.name)
    for kind in formats:
        FORMATS[kind].write(result.page, image.output(out, FORMATS[kind].folder))
    if overlay:
        save_overlay(image.path, result.page, pipeline.classes,
                     image.output(out, "overlay", ".jpg"), line_classes=pipeline.line_classes)
    return result


def _coco_of_written(written: Path, image_id: int, classes: Sequence[str]) -> List[dict]:
    """COCO results of a page finished by an earlier run, read back from its PAGE or ALTO
    file."""
    return page_to_coco_results(read_layout(written), image_id, classes)
