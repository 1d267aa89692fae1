"""What the PAGE-XML and ALTO readers share: the hardened XML parser, the class options
(class map, sub-type folding, element selection), the repair rules for region outlines,
the page-size check against the image, and the :class:`RepairReport` that counts and
describes every change.

Readers never print and never raise Python warnings: every skipped or repaired region
is one short line in ``RepairReport.notes``, and the tools print those lines (capped, or
all with ``--verbose``) and one summary (:meth:`RepairReport.summary`).
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import (Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Pattern, Sequence,
                    Tuple, Union)
from xml.etree import ElementTree as ET
from xml.parsers import expat

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import Polygon, box

from maskdla.data.image import displayed_size
from maskdla.data.page import Point
from maskdla.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
ClassMap = Mapping[str, Optional[str]]

#: The class-map key that matches every class the map does not name (``*=`` drops them).
ANY_CLASS = "*"
#: ALTO block elements; ``ComposedBlock`` holds other blocks and is read only when asked.
ALTO_BLOCK_ELEMENTS = ("TextBlock", "Illustration", "GraphicalElement", "ComposedBlock")
ALTO_DEFAULT_ELEMENTS = ("TextBlock", "Illustration", "GraphicalElement")
#: Region notes printed by default; the rest are counted (``--verbose`` prints them all).
MAX_NOTES_SHOWN = 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".jp2", ".webp")


class UnknownClasses(InputError):
    """Classes in the data that a given class list lacks (``missing``): a tool whose class
    list comes from elsewhere (eval: a checkpoint's) catches it to say so in its terms."""

    def __init__(self, missing: Sequence[str], message: str):
        self.missing = list(missing)
        super().__init__(message)


@dataclass
class RepairReport:
    """What the readers changed while reading; pass one to sum over many pages.

    Attributes:
        pages: pages read.
        skipped: regions dropped as unusable (fewer than 3 distinct points, no area,
            unreadable points, or nothing left inside the page).
        repaired: self-intersecting outlines made valid.
        clipped: outlines cut at the page border.
        dropped: regions whose class the class map drops.
        size_from_image: pages whose size came from the image, not the XML attributes.
        duplicate_ids: regions kept with the id of an earlier region of their page (the
            writers give them a new id).
        classes: regions kept, per class.
        found: regions per class as the files name them (sub-types folded when asked),
            before the class map; dropped and skipped ones too.
        notes: one line per skipped, repaired or duplicate region or line, ``FILE: region ID:
            what``.
    """

    pages: int = 0
    skipped: int = 0
    repaired: int = 0
    clipped: int = 0
    dropped: int = 0
    size_from_image: int = 0
    duplicate_ids: int = 0
    classes: Counter = field(default_factory=Counter)
    found: Counter = field(default_factory=Counter)
    notes: List[str] = field(default_factory=list)

    def note(self, path: PathLike, message: str) -> None:
        self.notes.append(f"{path}: {message}")

    def summary(self) -> str:
        """One line: pages, regions per class, repaired, clipped, skipped, dropped,
        duplicate ids."""
        per_class = ", ".join(f"{name} {count}" for name, count in sorted(self.classes.items()))
        return (f"{self.pages} pages, {sum(self.classes.values())} regions ({per_class or 'none'}); "
                f"repaired {self.repaired}, clipped {self.clipped}, skipped {self.skipped}, "
                f"dropped by the class map {self.dropped}, size from image "
                f"{self.size_from_image}, duplicate region ids {self.duplicate_ids}")

    def lines(self, verbosity: int = 1) -> List[str]:
        """What a tool prints: nothing (``verbosity`` 0), the first :data:`MAX_NOTES_SHOWN`
        notes and the summary (1), every note and the summary (2)."""
        if verbosity <= 0:
            return []
        shown = self.notes if verbosity >= 2 else self.notes[:MAX_NOTES_SHOWN]
        hidden = len(self.notes) - len(shown)
        more = [f"... and {hidden} more region notes (--verbose shows them)"] if hidden else []
        return [*shown, *more, self.summary()]


# ---------------------------------------------------------------------------- parsing

def _hardened_parser(path: PathLike) -> "expat.XMLParserType":
    """An expat parser (namespace separator " ") that refuses any DOCTYPE, entity
    declaration or external entity with an InputError naming ``path``."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*_: object) -> None:
        raise InputError("refusing a DOCTYPE or entity declaration (PAGE and ALTO never need one)",
                         path)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    return parser


def parse_xml(data: bytes, path: PathLike) -> Tuple[ET.Element, str]:
    """Parse XML bytes with expat, refusing DTDs and entity declarations; return (root,
    root namespace).

    Element and attribute names lose their namespace (PAGE and ALTO files use one); the
    root's namespace is returned so the caller can check the format. Refusing any
    DOCTYPE closes external entities (XXE) and entity-expansion bombs at once.
    """
    builder = ET.TreeBuilder()
    parser = _hardened_parser(path)
    namespaces: List[str] = []

    def start(name: str, attributes: Dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        if not namespaces:
            namespaces.append(namespace)
        builder.start(local, {key.rpartition(" ")[2]: value for key, value in attributes.items()})

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda name: builder.end(name.rpartition(" ")[2])
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise InputError(f"not well-formed XML ({error})", path) from None
    return builder.close(), namespaces[0]


def read_xml(path: PathLike) -> Tuple[ET.Element, str]:
    """:func:`parse_xml` of a file; InputError when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the file ({error.strerror})", path) from None
    return parse_xml(data, path)


class _RootFound(Exception):
    """Stops :func:`root_element` at the first start tag."""


def root_element(path: PathLike) -> Tuple[str, str]:
    """(local name, namespace) of a file's root element, read up to its start tag only,
    with the same refusals as :func:`parse_xml`."""
    parser = _hardened_parser(path)

    def found(name: str, _attributes: Dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        raise _RootFound(local, namespace)

    parser.StartElementHandler = found
    try:
        with open(path, "rb") as file:
            while True:
                chunk = file.read(16384)
                parser.Parse(chunk, not chunk)
                if not chunk:
                    break
    except _RootFound as root:
        return root.args[0], root.args[1]
    except OSError as error:
        raise InputError(f"cannot read the file ({error.strerror})", path) from None
    except expat.ExpatError as error:
        raise InputError(f"not well-formed XML ({error})", path) from None
    raise InputError("not well-formed XML (no root element)", path)


def read_document(path: PathLike, elements: Optional[Sequence[str]], root_name: str,
                  namespaces: Pattern[str], format_name: str) -> ET.Element:
    """The root of a file of one format, after checking ``elements``: InputError when the
    root element is not ``root_name`` in no namespace or one ``namespaces`` matches."""
    check_elements(elements)
    root, namespace = read_xml(path)
    if root.tag != root_name or not (namespace == "" or namespaces.match(namespace)):
        raise InputError(f"not {format_name} file (root element {root.tag!r} in namespace "
                         f"{namespace!r})", path)
    return root


def children(element: ET.Element, name: str) -> List[ET.Element]:
    return [child for child in element if child.tag == name]


def finite_points(pairs: Iterable[Sequence[str]]) -> List[Point]:
    """(x, y) string pairs -> float points; ValueError on unreadable or non-finite ones."""
    points = [(float(x), float(y)) for x, y in pairs]
    if not all(math.isfinite(c) for point in points for c in point):
        raise ValueError("non-finite coordinate")
    return points


# ------------------------------------------------------------------ classes, elements

def parse_class_map(items: Sequence[str]) -> Dict[str, Optional[str]]:
    """``["paragraph=text", "junk="]`` -> ``{"paragraph": "text", "junk": None}``.

    An empty right-hand side drops the class; ``*=`` drops every class not named.
    Raises InputError on an item without ``=``.
    """
    class_map: Dict[str, Optional[str]] = {}
    for item in items:
        old, equals, new = item.partition("=")
        if not equals or not old.strip():
            raise InputError(f"--class-map {item!r}: expected OLD=NEW (or OLD= to drop OLD)")
        class_map[old.strip()] = new.strip() or None
    return class_map


_SUBTYPE = re.compile(r"[#:]")


def main_type(label: str) -> str:
    """SegmOnto main type of a label: ``MainZone#1`` and ``MainZone:column`` -> ``MainZone``."""
    return _SUBTYPE.split(label, 1)[0] or label


def map_label(label: str, class_map: Optional[ClassMap] = None,
              fold_subtypes: bool = False) -> str:
    """A class after the read options: sub-types folded to their main type when
    ``fold_subtypes``, then the class map (an exact entry, else the ``*`` entry); "" means
    the class is dropped."""
    if fold_subtypes:
        label = main_type(label)
    if class_map is not None:
        if label in class_map:
            return class_map[label] or ""
        if ANY_CLASS in class_map:
            return class_map[ANY_CLASS] or ""
    return label


def unused_class_options(found: Iterable[str], kept: Iterable[str],
                         class_map: Optional[ClassMap], classes: Optional[Sequence[str]]
                         ) -> Optional[str]:
    """What of the class options the data never uses, in one line (None: all are used):
    ``class_map`` keys (``*`` aside) that match none of the ``found`` classes (as the
    data names them, sub-types folded when asked), and ``classes`` that no kept region
    has (the model would never see one)."""
    found, kept = set(found), set(kept)
    keys = [key for key in class_map or {} if key != ANY_CLASS and key not in found]
    absent = [name for name in classes or () if name not in kept]
    problems = []
    if keys:
        problems.append(f"--class-map {', '.join(keys)}: no class of the data has this name "
                        f"(its classes: {', '.join(sorted(found)) or 'none'})")
    if absent:
        problems.append(f"--classes {', '.join(absent)}: no page has this class")
    return "; ".join(problems) or None


def check_elements(elements: Optional[Sequence[str]]) -> None:
    """Raise InputError for a region element name neither PAGE nor ALTO has."""
    unknown = [name for name in elements or ()
               if not name.endswith("Region") and name not in ALTO_BLOCK_ELEMENTS]
    if unknown:
        raise InputError(f"unknown region element(s) {', '.join(unknown)}: PAGE names end in "
                         "'Region' (TextRegion, MusicRegion), ALTO ones are "
                         + ", ".join(ALTO_BLOCK_ELEMENTS))


# ------------------------------------------------------------------ geometry

def clean_polygon(points: Sequence[Point], width: int, height: int
                  ) -> Tuple[Optional[List[Point]], bool, bool]:
    """Validate a region outline; return (polygon or None if unusable, repaired, clipped).

    Fewer than 3 distinct points or no area -> None. A self-intersecting outline is made
    valid and its largest polygon kept (a region is one polygon; for the usual loops and
    folds the other parts are slivers). Points outside ``[0, width-1] x [0, height-1]``
    are clipped to the page. Untouched outlines keep their points as they were.
    Coordinates too large for shapely's arithmetic (1e300) raise no RuntimeWarning: the
    readers raise no warnings, their notes say what was done.
    """
    with np.errstate(all="ignore"):
        return _clean_polygon(points, width, height)


def _clean_polygon(points: Sequence[Point], width: int, height: int
                   ) -> Tuple[Optional[List[Point]], bool, bool]:
    if len(points) > 1 and points[0] == points[-1]:
        points = points[:-1]
    if len(set(points)) < 3:
        return None, False, False
    shape = Polygon(points)
    repaired = not shape.is_valid
    if repaired:
        shape = _largest_polygon(shapely.make_valid(shape))
    page = box(0, 0, width - 1, height - 1)
    clipped = shape is not None and not page.covers(shape)
    if clipped:
        shape = _largest_polygon(shape.intersection(page))
    if shape is None or shape.area <= 0:  # nothing usable: skipped, not repaired
        return None, False, clipped
    if not (repaired or clipped):
        return list(points), False, False
    return [(float(x), float(y)) for x, y in shape.exterior.coords[:-1]], repaired, clipped


def _largest_polygon(geometry: shapely.Geometry) -> Optional[Polygon]:
    """The largest Polygon in any geometry (collections searched), or None."""
    def polygons(part: shapely.Geometry) -> Iterator[Polygon]:
        if part.geom_type == "Polygon":
            yield part
        for child in getattr(part, "geoms", ()):
            yield from polygons(child)

    return max(polygons(geometry), key=lambda polygon: polygon.area, default=None)


def admit_region(label: str, outline: Callable[[], List[Point]], region_id: str,
                 size: Tuple[int, int], report: RepairReport, path: PathLike,
                 class_map: Optional[ClassMap], fold_subtypes: bool
                 ) -> Optional[Tuple[str, List[Point]]]:
    """(class, repaired outline) of a region, or None when the class map drops it or its
    outline is unusable; counts and notes what was done in ``report``. ``outline()``
    reads the points (ValueError: unreadable)."""
    label = main_type(label) if fold_subtypes else label
    report.found[label] += 1
    label = map_label(label, class_map)
    if not label:
        report.dropped += 1
        return None
    try:
        points: Optional[List[Point]] = outline()
    except ValueError:
        points = None
    polygon, repaired, clipped = clean_polygon(points or [], *size)
    report.repaired += repaired
    report.clipped += clipped
    if polygon is None:
        report.skipped += 1
        reason = ("unreadable or missing outline" if not points else
                  "fewer than 3 distinct points" if len(set(points)) < 3 else
                  "no area inside the page")
        report.note(path, f"region {region_id} skipped: {reason}")
        return None
    if repaired or clipped:
        report.note(path, f"region {region_id}: " + " and ".join(
            word for word, done in (("self-intersection repaired", repaired),
                                    ("clipped to the page", clipped)) if done))
    report.classes[label] += 1
    return label, polygon


def count_duplicate_ids(region_ids: Sequence[str], report: RepairReport, path: PathLike) -> None:
    """Count and note in ``report`` each of a page's kept regions whose id an earlier one
    has: the reading order and text lines cannot tell them apart, the writers rename them."""
    seen = set()
    for region_id in region_ids:
        if region_id in seen:
            report.duplicate_ids += 1
            report.note(path, f"region {region_id}: the id of an earlier region of the page "
                              "(written under a new id)")
        seen.add(region_id)


# ------------------------------------------------------------------ image and size

def image_candidates(xml_path: PathLike, image_filename: str) -> List[Path]:
    """Where the image of a PAGE or ALTO file may be: next to the XML file, then in its
    parent folder (Transkribus puts the XML in ``page/``, maskdla ALTO in ``alto/``), as
    written and by base name; without a name, the XML file's stem with an image suffix.

    Only places inside the XML file's parent folder (the data folder) are candidates: an
    absolute name elsewhere (some ALTO exports write the scanner's path) is looked up by
    its base name only, and a name that climbs out with ``..`` is refused.

    Raises:
        InputError: naming the XML file, for a ``..`` name leading out of the data folder.
    """
    folder = Path(xml_path).parent
    written = image_filename.replace("\\", "/")
    names = [image_filename, Path(written).name]
    if not image_filename:
        names = [Path(xml_path).stem + suffix for suffix in IMAGE_SUFFIXES]
    candidates = [base / name for base in (folder, folder.parent) for name in names if name]
    inside = [candidate for candidate in candidates if _within(candidate, folder.parent)]
    if ".." in Path(written).parts and not _within(folder / written, folder.parent):
        raise InputError(f"the image name {image_filename!r} points outside the data folder "
                         f"{folder.parent}; refusing to read it (give the image's name)",
                         xml_path)
    return list(dict.fromkeys(inside))


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder``, by their names (``..`` resolved, links not
    followed: a data folder may be a link itself)."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def find_image(xml_path: PathLike, image_filename: str) -> Optional[Path]:
    """The first existing :func:`image_candidates` file, or None."""
    return next((p for p in image_candidates(xml_path, image_filename) if p.is_file()), None)


def image_header(image_path: Path) -> Tuple[int, int, Optional[Tuple[float, float]]]:
    """(width, height, (x dpi, y dpi) or None) as displayed (EXIF rotation applied),
    reading only the header. A resolution of 1 dpi or less counts as none."""
    try:
        with Image.open(image_path) as image:
            width, height = displayed_size(image)
            dpi = image.info.get("dpi")
            if dpi and (width, height) != image.size:  # shown rotated by 90 or 270 degrees
                dpi = dpi[::-1]
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the image header ({error})", image_path) from None
    try:
        resolution = (float(dpi[0]), float(dpi[1])) if dpi else None
    except (TypeError, ValueError, IndexError):
        resolution = None
    if resolution is not None and min(resolution) <= 1:
        resolution = None
    return width, height, resolution


def positive_int(text: Optional[str]) -> Optional[int]:
    """A size attribute ("845", "845.0") as an int; None when absent or not a positive
    whole number."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return int(value) if value >= 1 and value == int(value) else None


def check_page_size(size: Tuple[Optional[int], Optional[int]], image_path: Optional[Path],
                    image_name: Optional[str], report: RepairReport, xml_path: PathLike,
                    attributes: str) -> Tuple[int, int]:
    """The page size: ``size`` from the XML ``attributes`` (None where unusable), checked
    against the image when it exists, else taken from it; an error when neither is known
    or the two differ."""
    width, height = size
    if image_path is None:
        if width is None or height is None:
            raise InputError(f"{attributes} missing or not a positive integer, and the image "
                             f"{image_name!r} was not found", xml_path)
        return width, height
    image_width, image_height, _ = image_header(image_path)
    if width is None or height is None:
        report.size_from_image += 1
        return image_width, image_height
    if (width, height) != (image_width, image_height):
        raise InputError(f"page size {width}x{height} differs from the image {image_path} "
                         f"({image_width}x{image_height})", xml_path)
    return width, height
