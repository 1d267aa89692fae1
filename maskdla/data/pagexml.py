"""Read and write PAGE-XML (PRImA page content) files.

:func:`read_page` reads the 2010-03-19, 2013-07-15, 2017-07-15 and 2019-07-15 schemas (any
PRImA ``pagecontent`` namespace, http or https) into a :class:`~maskdla.data.page.Page`,
resolving each region's class and repairing what real files get wrong (see
docs/data.md). :func:`write_page` writes PAGE 2019-07-15 that validates against the
official schema.

The parser refuses any document type declaration: PAGE files never need one, and refusing
it closes external entities (XXE) and entity-expansion bombs at once.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union
from xml.etree import ElementTree as ET
from xml.parsers import expat

import shapely
from PIL import Image
from shapely.geometry import Polygon, box

from maskdla.data.image import displayed_size as _image_size
from maskdla.data.page import Page, Point, Region, TextLine
from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

PathLike = Union[str, "os.PathLike[str]"]
ClassMap = Mapping[str, Optional[str]]

PAGE_2019_NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
_PAGE_NAMESPACE = re.compile(r"^https?://schema\.primaresearch\.org/PAGE/gts/pagecontent/[\d-]+$")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"

#: Region elements a PAGE 2019 ``Page`` may hold.
REGION_ELEMENTS = (
    "TextRegion", "ImageRegion", "LineDrawingRegion", "GraphicRegion", "TableRegion",
    "ChartRegion", "MapRegion", "SeparatorRegion", "MathsRegion", "ChemRegion", "MusicRegion",
    "AdvertRegion", "NoiseRegion", "UnknownRegion", "CustomRegion")
#: The values PAGE 2019 allows in ``TextRegion/@type`` (pc:TextTypeSimpleType).
TEXT_REGION_TYPES = (
    "paragraph", "heading", "caption", "header", "footer", "page-number", "drop-capital",
    "credit", "floating", "signature-mark", "catch-word", "marginalia", "footnote",
    "footnote-continued", "endnote", "TOC-entry", "list-label", "other")
#: Labels written as ``MusicRegion`` whatever the region's kind.
MUSIC_LABELS = ("staff", "music")


class PageWarning(UserWarning):
    """A region or line that :func:`read_page` skipped or repaired."""


@dataclass
class RepairReport:
    """What :func:`read_page` changed while reading; pass one to sum over many pages.

    Attributes:
        pages: pages read.
        skipped: regions dropped as unusable (fewer than 3 distinct points, no area,
            unreadable points, or nothing left inside the page).
        repaired: self-intersecting outlines made valid.
        clipped: outlines cut at the page border.
        dropped: regions whose class the class map drops.
        size_from_image: pages whose size came from the image, not the PAGE attributes.
    """

    pages: int = 0
    skipped: int = 0
    repaired: int = 0
    clipped: int = 0
    dropped: int = 0
    size_from_image: int = 0


# ---------------------------------------------------------------------------- parsing

def _parse_xml(data: bytes, path: PathLike) -> Tuple[ET.Element, str]:
    """Parse XML bytes with expat, refusing DTDs; return (root, root namespace).

    Element tags lose their namespace (PAGE files use one namespace); the root's namespace
    is returned so the caller can check it is PAGE.
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    namespaces: List[str] = []

    def refuse(*_: object) -> None:
        raise InputError("refusing a DOCTYPE or entity declaration (PAGE-XML never needs one)",
                         path)

    def start(name: str, attributes: Dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        if not namespaces:
            namespaces.append(namespace)
        builder.start(local, {key.rpartition(" ")[2]: value for key, value in attributes.items()})

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda name: builder.end(name.rpartition(" ")[2])
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise InputError(f"not well-formed XML ({error})", path) from None
    return builder.close(), namespaces[0]


def _children(element: ET.Element, name: str) -> List[ET.Element]:
    return [child for child in element if child.tag == name]


def parse_points(element: Optional[ET.Element]) -> List[Point]:
    """Points of a ``Coords``/``Baseline`` element: ``@points="x,y x,y"`` or PAGE 2010's
    ``<Point x= y=/>`` children. Raises ValueError on unreadable numbers."""
    if element is None:
        return []
    if element.get("points") is not None:
        pairs = [token.split(",") for token in element.get("points", "").split()]
    else:
        pairs = [[point.get("x", ""), point.get("y", "")] for point in _children(element, "Point")]
    points = [(float(x), float(y)) for x, y in pairs]
    if not all(math.isfinite(c) for point in points for c in point):
        raise ValueError("non-finite coordinate")
    return points


_CUSTOM_BLOCK = re.compile(r"([\w-]+)\s*\{([^}]*)\}")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def parse_custom(custom: Optional[str]) -> Dict[str, Dict[str, str]]:
    """Parse a ``custom`` attribute, ``"readingOrder {index:3;} structure {type:lyrics;}"``
    -> ``{"readingOrder": {"index": "3"}, "structure": {"type": "lyrics"}}``, decoding
    Transkribus escapes (``\\u0020`` -> space) in the values."""
    blocks: Dict[str, Dict[str, str]] = {}
    for name, body in _CUSTOM_BLOCK.findall(custom or ""):
        block = blocks.setdefault(name, {})
        for item in body.split(";"):
            key, colon, value = item.partition(":")
            if colon:
                block[key.strip()] = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value.strip())
    return blocks


def _escape_custom(value: str) -> str:
    """Escape a value for a ``custom`` block the Transkribus way (``\\uXXXX``)."""
    return "".join(c if c.isalnum() or c in "-_." else f"\\u{ord(c):04x}" for c in value)


def parse_class_map(items: Sequence[str]) -> Dict[str, Optional[str]]:
    """``["paragraph=text", "junk="]`` -> ``{"paragraph": "text", "junk": None}``.

    An empty right-hand side drops the class. Raises InputError on an item without ``=``.
    """
    class_map: Dict[str, Optional[str]] = {}
    for item in items:
        old, equals, new = item.partition("=")
        if not equals or not old.strip():
            raise InputError(f"--class-map {item!r}: expected OLD=NEW (or OLD= to drop OLD)")
        class_map[old.strip()] = new.strip() or None
    return class_map


def resolve_label(element: ET.Element, custom: Mapping[str, Mapping[str, str]]) -> str:
    """Class of a region: ``custom`` structure type, else ``@type``, else the element name."""
    return custom.get("structure", {}).get("type") or element.get("type") or element.tag


# ------------------------------------------------------------------ geometry and size

def clean_polygon(points: Sequence[Point], width: int, height: int
                  ) -> Tuple[Optional[List[Point]], bool, bool]:
    """Validate a region outline; return (polygon or None if unusable, repaired, clipped).

    Fewer than 3 distinct points or no area -> None. A self-intersecting outline is made
    valid and its largest polygon kept (a region is one polygon; for the usual loops and
    folds the other parts are slivers). Points outside ``[0, width-1] x [0, height-1]``
    are clipped to the page. Untouched outlines keep their points as they were.
    """
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
    if shape is None or shape.area <= 0:
        return None, repaired, clipped
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


def image_candidates(xml_path: PathLike, image_filename: str) -> List[Path]:
    """Where the image of a PAGE file may be: next to the XML file, then in its parent
    folder (Transkribus puts the XML in ``page/``), as written and by base name."""
    folder = Path(xml_path).parent
    names = [image_filename, Path(image_filename.replace("\\", "/")).name]
    candidates = [base / name for base in (folder, folder.parent) for name in names if name]
    return list(dict.fromkeys(candidates))


def find_image(xml_path: PathLike, image_filename: str) -> Optional[Path]:
    """The first existing :func:`image_candidates` file, or None."""
    return next((p for p in image_candidates(xml_path, image_filename) if p.is_file()), None)


def _positive_int(text: Optional[str]) -> Optional[int]:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return int(value) if value >= 1 and value == int(value) else None


def _page_size(page_element: ET.Element, xml_path: PathLike, report: RepairReport
               ) -> Tuple[int, int]:
    """Page size from the PAGE attributes, checked against the image when it exists."""
    width = _positive_int(page_element.get("imageWidth"))
    height = _positive_int(page_element.get("imageHeight"))
    image_path = find_image(xml_path, page_element.get("imageFilename", ""))
    if image_path is None:
        if width is None or height is None:
            raise InputError("imageWidth/imageHeight missing or not a positive integer, and the "
                             f"image {page_element.get('imageFilename')!r} was not found",
                             xml_path)
        return width, height
    image_width, image_height = _image_size(image_path)
    if width is None or height is None:
        report.size_from_image += 1
        return image_width, image_height
    if (width, height) != (image_width, image_height):
        raise InputError(f"page size {width}x{height} differs from the image {image_path} "
                         f"({image_width}x{image_height})", xml_path)
    return width, height


# --------------------------------------------------------------------------- reading

def _region_elements(parent: ET.Element) -> Iterator[ET.Element]:
    """Every ``*Region`` element under ``parent``, nested ones after their parent."""
    for child in parent:
        if child.tag.endswith("Region"):
            yield child
            yield from _region_elements(child)


def _reading_order(group: ET.Element) -> Iterator[str]:
    """Region ids of a ReadingOrder group, flattened; indexed children sorted by @index."""
    def index(child: ET.Element) -> int:
        text = child.get("index", "")
        return int(text) if text.lstrip("-").isdigit() else 0

    for child in sorted(group, key=index):  # stable: unindexed children keep file order
        if child.get("regionRef"):
            yield child.get("regionRef", "")
        if "Group" in child.tag:
            yield from _reading_order(child)


def _score(custom: Mapping[str, Mapping[str, str]]) -> Optional[float]:
    """``custom="score {value:0.97;}"`` -> 0.97; None when absent or not a number."""
    try:
        return float(custom["score"]["value"])
    except (KeyError, ValueError):
        return None


def _warn(message: str, path: PathLike) -> None:
    warnings.warn(f"{path}: {message}", PageWarning, stacklevel=3)


def read_page(path: PathLike, elements: Optional[Sequence[str]] = None,
              class_map: Optional[ClassMap] = None,
              report: Optional[RepairReport] = None) -> Page:
    """Read a PAGE-XML file.

    Args:
        path: the XML file.
        elements: region element names to keep (e.g. ``["TextRegion", "MusicRegion"]``);
            default every ``*Region`` element, nested ones included.
        class_map: renames classes after resolution (``{"paragraph": "text"}``); a class
            mapped to None or "" is dropped.
        report: counts of skipped/repaired/clipped/dropped regions are added to it.

    Returns:
        The :class:`Page`, regions in reading order when the file gives one, else in file
        order. Skipped and repaired regions also raise a :class:`PageWarning`.

    Raises:
        InputError: unreadable or non-PAGE XML, a DTD, or a page size that cannot be known.
    """
    report = report if report is not None else RepairReport()
    unknown = [name for name in elements or () if not name.endswith("Region")]
    if unknown:
        raise InputError(f"unknown region element(s) {', '.join(unknown)}: names end in 'Region'"
                         ", e.g. TextRegion, MusicRegion")
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the file ({error.strerror})", path) from None
    root, namespace = _parse_xml(data, path)
    if root.tag != "PcGts" or not (namespace == "" or _PAGE_NAMESPACE.match(namespace)):
        raise InputError(f"not a PAGE-XML file (root element {root.tag!r} in namespace "
                         f"{namespace!r})", path)
    page_elements = _children(root, "Page")
    if not page_elements:
        raise InputError("PAGE-XML without a Page element", path)
    page_element = page_elements[0]
    width, height = _page_size(page_element, path, report)
    page = Page(image_filename=page_element.get("imageFilename", ""), width=width, height=height)
    report.pages += 1

    for number, element in enumerate(_region_elements(page_element)):
        if elements is not None and element.tag not in elements:
            continue
        region_id = element.get("id") or f"region_{number}"
        custom = parse_custom(element.get("custom"))
        label = resolve_label(element, custom)
        if class_map is not None and label in class_map:
            label = class_map[label] or ""
        if not label:
            report.dropped += 1
            continue
        try:
            points = parse_points(next(iter(_children(element, "Coords")), None))
        except ValueError:
            points = []
        polygon, repaired, clipped = clean_polygon(points, width, height)
        report.repaired += repaired
        report.clipped += clipped
        if polygon is None:
            report.skipped += 1
            reason = ("unreadable or missing Coords" if not points else
                      "fewer than 3 distinct points" if len(set(points)) < 3 else
                      "no area inside the page")
            _warn(f"region {region_id} skipped: {reason}", path)
            continue
        if repaired or clipped:
            _warn(f"region {region_id}: " + " and ".join(
                word for word, done in (("self-intersection repaired", repaired),
                                        ("clipped to the page", clipped)) if done), path)
        page.regions.append(Region(id=region_id, kind=element.tag, label=label, polygon=polygon,
                                   score=_score(custom)))
        page.lines.extend(_text_lines(element, region_id, path))

    kept = {region.id for region in page.regions}
    for reading_order in _children(page_element, "ReadingOrder"):
        order = list(dict.fromkeys(_reading_order(reading_order)))
        page.reading_order = [region_id for region_id in order if region_id in kept]
    if page.reading_order:
        position = {region_id: i for i, region_id in enumerate(page.reading_order)}
        page.regions.sort(key=lambda region: position.get(region.id, len(position)))
    return page


def _text_lines(region: ET.Element, region_id: str, path: PathLike) -> Iterator[TextLine]:
    for number, line in enumerate(_children(region, "TextLine")):
        line_id = line.get("id") or f"{region_id}_line_{number}"
        try:
            polygon = parse_points(next(iter(_children(line, "Coords")), None))
            baseline = parse_points(next(iter(_children(line, "Baseline")), None))
        except ValueError:
            _warn(f"text line {line_id} skipped: unreadable points", path)
            continue
        unicode = [u.text or "" for equiv in _children(line, "TextEquiv")[:1]
                   for u in _children(equiv, "Unicode")]
        yield TextLine(id=line_id, region_id=region_id, polygon=polygon, baseline=baseline,
                       text=unicode[0] if unicode else None)


# --------------------------------------------------------------------------- writing

_XML_ID = re.compile(r"^[A-Za-z_][\w.-]*$")


def _xml_ids(ids: Sequence[str]) -> List[str]:
    """Unique, schema-legal (xs:ID) versions of ``ids``, unchanged where already legal."""
    result: List[str] = []
    used = set()
    for original in ids:
        candidate = (original if _XML_ID.match(original)
                     else "r_" + re.sub(r"[^\w.-]", "_", original))
        unique, suffix = candidate, 1
        while unique in used:
            unique, suffix = f"{candidate}_{suffix}", suffix + 1
        used.add(unique)
        result.append(unique)
    return result


def _points(polygon: Sequence[Point]) -> str:
    """PAGE points string: non-negative integers (pc:PointsType)."""
    return " ".join(f"{max(0, round(x))},{max(0, round(y))}" for x, y in polygon)


def _region_element(region: Region) -> str:
    """Element name written for a region: MusicRegion for music labels, its own kind when
    PAGE 2019 has it, else TextRegion."""
    if region.label in MUSIC_LABELS or region.kind == "MusicRegion":
        return "MusicRegion"
    return region.kind if region.kind in REGION_ELEMENTS else "TextRegion"


def page_to_xml(page: Page, created: Optional[datetime] = None) -> bytes:
    """Serialise a Page as PAGE 2019-07-15 XML (see :func:`write_page`)."""
    # Namespace declarations as plain attributes: ElementTree's default_namespace option
    # refuses unqualified attribute names, which PAGE uses throughout.
    root = ET.Element("PcGts", {
        "xmlns": PAGE_2019_NAMESPACE, "xmlns:xsi": _XSI,
        "xsi:schemaLocation": f"{PAGE_2019_NAMESPACE} {PAGE_2019_NAMESPACE}/pagecontent.xsd"})
    metadata = ET.SubElement(root, "Metadata")
    stamp = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    now = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, text in (("Creator", "maskdla"), ("Created", now), ("LastChange", now)):
        ET.SubElement(metadata, name).text = text
    page_element = ET.SubElement(root, "Page", {
        "imageFilename": page.image_filename, "imageWidth": str(int(page.width)),
        "imageHeight": str(int(page.height))})

    ids = dict(zip((id(region) for region in page.regions),
                   _xml_ids([region.id for region in page.regions])))
    first_id = {}
    for region in page.regions:
        first_id.setdefault(region.id, ids[id(region)])
    order = [first_id[i] for i in dict.fromkeys(page.reading_order) if i in first_id]
    order += [ids[id(r)] for r in page.regions if ids[id(r)] not in order]
    if order:
        group = ET.SubElement(ET.SubElement(page_element, "ReadingOrder"),
                              "OrderedGroup", {"id": "reading_order",
                                                    "caption": "Regions reading order"})
        for index, region_id in enumerate(order):
            ET.SubElement(group, "RegionRefIndexed",
                          {"index": str(index), "regionRef": region_id})

    position = {region_id: index for index, region_id in enumerate(order)}
    lines_of: Dict[str, List[TextLine]] = {}
    for line in page.lines:
        lines_of.setdefault(line.region_id, []).append(line)
    line_ids = iter(_xml_ids([line.id for line in page.lines]))
    written_line_ids = {id(line): next(line_ids) for line in page.lines}
    for region in page.regions:
        element_name = _region_element(region)
        custom = f"readingOrder {{index:{position[ids[id(region)]]};}} " \
                 f"structure {{type:{_escape_custom(region.label)};}}"
        if region.score is not None:
            custom += f" score {{value:{region.score:.4g};}}"
        attributes = {"id": ids[id(region)], "custom": custom}
        if element_name == "TextRegion" and region.label in TEXT_REGION_TYPES:
            attributes["type"] = region.label
        element = ET.SubElement(page_element, element_name, attributes)
        ET.SubElement(element, "Coords", {"points": _points(region.polygon)})
        if element_name != "TextRegion":
            continue  # only TextRegion may hold TextLines
        for line in lines_of.pop(region.id, []):
            if len(line.polygon) < 2:
                continue  # pc:PointsType needs two points at least
            line_element = ET.SubElement(element, "TextLine", {"id": written_line_ids[id(line)]})
            ET.SubElement(line_element, "Coords", {"points": _points(line.polygon)})
            if len(line.baseline) >= 2:
                ET.SubElement(line_element, "Baseline", {"points": _points(line.baseline)})
            if line.text is not None:
                equiv = ET.SubElement(line_element, "TextEquiv")
                ET.SubElement(equiv, "Unicode").text = line.text
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def write_page(page: Page, path: PathLike, created: Optional[datetime] = None) -> None:
    """Write ``page`` as PAGE 2019-07-15 XML, atomically.

    Every region carries its class in ``custom="structure {type:...;}"`` (Transkribus
    style; escaped) and its reading-order index; TextRegions also get ``@type`` when the
    class is one of :data:`TEXT_REGION_TYPES`. Labels in :data:`MUSIC_LABELS` and regions
    of kind MusicRegion become ``MusicRegion``; kinds PAGE 2019 lacks become TextRegion.
    ``Region.score`` goes to ``custom="score {value:...;}"``. The reading order is
    ``page.reading_order``, then the remaining regions in list order. Coordinates are
    rounded to non-negative integers, as the schema requires; ids that are not legal XML
    ids are rewritten. Text lines are written under their TextRegion. ``created`` (default:
    now) stamps Metadata's Created and LastChange, in UTC; a fixed one makes the file
    byte-identical run after run.
    """
    write_bytes_atomic(path, page_to_xml(page, created))
