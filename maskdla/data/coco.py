"""COCO instance-segmentation JSON <-> pages.

:func:`pages_to_coco` turns pages into a COCO dict (polygon segmentations, area = polygon
area, bbox x, y, w, h, iscrowd 0); :func:`folder_to_coco` does it for a dataset folder of
PAGE-XML or ALTO files;
:func:`coco_to_pages` goes back; :func:`load_coco` reads and checks a COCO file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from shapely.geometry import Polygon

from maskdla.data.layout import LAYOUT_FOLDERS, collect_layout_files, read_layout
from maskdla.data.lines import INSTANCE_KINDS, read_line_instances
from maskdla.data.page import Page, Point, Region
from maskdla.data.reading import ClassMap, PathLike, RepairReport, UnknownClasses, find_image
from maskdla.errors import InputError
from maskdla.files import read_json


def pages_to_coco(entries: Iterable[Tuple[Page, str]],
                  classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Build a COCO dict from (page, image file name) pairs.

    Args:
        entries: each page with the file name to store for its image (relative to the
            JSON file, by convention).
        classes: category order (ids 1..C); default the sorted class names found.

    Returns:
        ``{"info", "images", "annotations", "categories"}``. Image and annotation ids
        count from 1 in input order. Annotations carry ``region_id`` and ``kind`` (and
        ``score`` for predictions) so :func:`coco_to_pages` can restore them.

    Raises:
        InputError: ``classes`` has duplicates or lacks a class present in the pages.
    """
    entries = list(entries)
    found = sorted({region.label for page, _ in entries for region in page.regions})
    if classes is None:
        classes = found
    if len(set(classes)) != len(classes):
        raise InputError(f"--classes lists a class twice: {' '.join(classes)}")
    missing = [label for label in found if label not in classes]
    if missing:
        raise UnknownClasses(missing, f"classes {', '.join(missing)} found in the pages but "
                             "not in --classes; add them or map them with --class-map "
                             "NAME=OTHER (NAME= drops)")
    category_id = {name: i for i, name in enumerate(classes, start=1)}
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for image_id, (page, file_name) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": file_name,
                       "width": page.width, "height": page.height})
        for region in page.regions:
            xs = [x for x, _ in region.polygon]
            ys = [y for _, y in region.polygon]
            annotation = {
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": category_id[region.label],
                "segmentation": [[c for point in region.polygon for c in point]],
                "area": Polygon(region.polygon).area,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "iscrowd": 0, "region_id": region.id, "kind": region.kind}
            if region.score is not None:
                annotation["score"] = region.score
            annotations.append(annotation)
    return {"info": {"description": "written by maskdla"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": name} for name, i in category_id.items()]}


def image_file_name(xml_path: PathLike, page: Page, relative_to: PathLike) -> str:
    """The page's image path relative to ``relative_to`` (posix separators); where the
    image is missing, the place :func:`find_image` looks first."""
    image = find_image(xml_path, page.image_filename)
    if image is None:  # not there (size from the attributes): assume the folder convention
        folder = Path(xml_path).parent
        base = folder.parent if folder.name in LAYOUT_FOLDERS else folder
        image = base / Path(page.image_filename.replace("\\", "/")).name
    return Path(os.path.relpath(image, relative_to)).as_posix()


def read_pages(xml_files: Sequence[PathLike], relative_to: PathLike,
               elements: Optional[Sequence[str]] = None, class_map: Optional[ClassMap] = None,
               report: Optional[RepairReport] = None, fold_subtypes: bool = False,
               instances: str = "regions") -> List[Tuple[Page, str]]:
    """:func:`~maskdla.data.layout.read_layout` each PAGE or ALTO file; return (page, image
    file name relative to ``relative_to``) pairs for :func:`pages_to_coco`. ``instances``
    "lines": each page's regions are its text lines
    (:func:`~maskdla.data.lines.read_line_instances`)."""
    if instances not in INSTANCE_KINDS:
        raise ValueError(f"instances must be one of {INSTANCE_KINDS}, got {instances!r}")
    read = read_line_instances if instances == "lines" else read_layout
    entries = []
    for xml_path in xml_files:
        page = read(xml_path, elements=elements, class_map=class_map, report=report,
                    fold_subtypes=fold_subtypes)
        entries.append((page, image_file_name(xml_path, page, relative_to)))
    return entries


def folder_to_coco(folder: PathLike, elements: Optional[Sequence[str]] = None,
                   class_map: Optional[ClassMap] = None,
                   classes: Optional[Sequence[str]] = None, fold_subtypes: bool = False,
                   instances: str = "regions") -> Tuple[Dict[str, Any], RepairReport]:
    """COCO dict of the PAGE/ALTO files of ``folder`` (``page/*.xml``, ``alto/*.xml`` or
    ``*.xml``), image file names relative to ``folder``; and the :class:`RepairReport` of
    reading them. ``instances``: "regions", or "lines" (see :func:`read_pages`)."""
    report = RepairReport()
    entries = read_pages(collect_layout_files([folder]), folder, elements, class_map, report,
                         fold_subtypes, instances)
    return pages_to_coco(entries, classes), report


def _annotation_polygon(annotation: Dict[str, Any]) -> List[Point]:
    """The largest polygon of a COCO polygon segmentation ([[x1, y1, ...], ...]); for an
    RLE or empty segmentation, the bbox rectangle. Raises KeyError/TypeError/ValueError
    on malformed values."""
    segmentation = annotation.get("segmentation")
    rings = [[(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
             for flat in (segmentation if isinstance(segmentation, list) else [])
             if len(flat) >= 6]
    if rings:
        return max(rings, key=lambda ring: Polygon(ring).area)
    x, y, w, h = map(float, annotation["bbox"])
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def coco_to_pages(coco: Dict[str, Any]) -> List[Page]:
    """Pages of a COCO dict (checked by :func:`load_coco`), one per image in order.

    ``image_filename`` is the base name of ``file_name`` (PAGE files sit next to or one
    folder below their image). A polygon segmentation with several parts keeps the
    largest; an RLE or empty segmentation becomes its bbox rectangle. ``region_id``,
    ``kind`` and ``score`` are restored when the annotation has them.
    """
    names = {category["id"]: category["name"] for category in coco["categories"]}
    pages: Dict[Any, Page] = {}
    for image in coco["images"]:
        pages[image["id"]] = Page(image_filename=Path(image["file_name"]).name,
                                  width=int(image["width"]), height=int(image["height"]))
    for annotation in coco["annotations"]:
        polygon = _annotation_polygon(annotation)
        page = pages[annotation["image_id"]]
        page.regions.append(Region(
            id=str(annotation.get("region_id") or f"region_{annotation['id']}"),
            kind=str(annotation.get("kind") or "TextRegion"),
            label=names[annotation["category_id"]], polygon=polygon,
            score=annotation.get("score")))
    return list(pages.values())


_REQUIRED = {"images": ("id", "file_name", "width", "height"),
             "annotations": ("id", "image_id", "category_id"),
             "categories": ("id", "name")}


def load_coco(path: PathLike) -> Dict[str, Any]:
    """Read a COCO JSON file and check its structure.

    Raises:
        InputError: unreadable or broken JSON, a missing list or key, an annotation
            without segmentation and bbox, or one naming an unknown image or category.
    """
    coco = read_json(path, "COCO file")
    if not isinstance(coco, dict):
        raise InputError("not a COCO file: the top level is not an object", path)
    for key, fields in _REQUIRED.items():
        items = coco.get(key)
        if not isinstance(items, list):
            raise InputError(f"not a COCO file: no {key!r} list", path)
        for number, item in enumerate(items):
            absent = [field for field in fields if not isinstance(item, dict) or field not in item]
            if absent:
                raise InputError(f"{key}[{number}] lacks {', '.join(absent)}", path)
    image_ids = {image["id"] for image in coco["images"]}
    category_ids = {category["id"] for category in coco["categories"]}
    for number, annotation in enumerate(coco["annotations"]):
        if annotation["image_id"] not in image_ids:
            raise InputError(f"annotations[{number}] names unknown image {annotation['image_id']}",
                             path)
        if annotation["category_id"] not in category_ids:
            raise InputError(f"annotations[{number}] names unknown category "
                             f"{annotation['category_id']}", path)
        try:
            _annotation_polygon(annotation)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"annotations[{number}] has no usable polygon segmentation or bbox",
                             path) from None
    for number, image in enumerate(coco["images"]):
        if not all(isinstance(image[key], int) and image[key] > 0 for key in ("width", "height")):
            raise InputError(f"images[{number}] width/height are not positive integers", path)
    return coco
