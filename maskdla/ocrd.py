"""``ocrd-maskdla-segment``: maskdla's models as an OCR-D processor (ocrd 3 Processor API).

The processor reads each page of an OCR-D workspace (its image, or the PAGE file of an
earlier step and the image that PAGE names), runs a region model and optionally a line
model (:class:`~maskdla.prediction.PagePipeline`) on the page image OCR-D gives
(``Workspace.image_from_page``: cropped to the Border, deskewed where an earlier step
says so), maps the polygons back to page coordinates, and writes the regions (PAGE region
types from :data:`DEFAULT_CLASS_TYPES` and the ``class_types`` parameter), their text lines
with baselines and a reading order into the output PAGE file. OCR-D records the step itself:
a ``pc:MetadataItem`` in each PAGE file and a ``mets:agent`` in the METS.

Bad input (a missing file group, a page without its image, a checkpoint that is not there
or whose classes have no PAGE type) is one line on stderr and exit code 2, as everywhere in
maskdla; OCR-D's own logging stays as it is for normal operation. docs/pipelines.md has the
commands. ``ocrd`` is an extra (``pip install 'maskdla[ocrd]'``); this is the only module
that imports it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, NamedTuple, Optional,
                    Sequence, Set, Tuple)

import numpy as np
from shapely import make_valid, unary_union
from shapely.geometry import LineString, Polygon

from maskdla.cli import EXIT_BAD_INPUT, one_line
from maskdla.data.page import Page, Point, Region, TextLine
from maskdla.data.pagexml import REGION_ELEMENTS, TEXT_REGION_TYPES, structure_custom
from maskdla.errors import InputError, error_line

if TYPE_CHECKING:
    import torch

try:
    import click
    from lxml import etree
    from ocrd import OcrdPageResult, Processor, Resolver
    from ocrd.decorators import ocrd_cli_options, ocrd_cli_wrap_processor
    from ocrd_models import ocrd_page
    from ocrd_models.ocrd_page import (BaselineType, CoordsType, OcrdPage, OrderedGroupType,
                                       PageType, ReadingOrderType, RegionRefIndexedType,
                                       TextLineType, to_xml)
    from ocrd_utils import coordinates_for_segment, points_from_polygon
    from ocrd_validators import ParameterValidator, WorkspaceValidator
except ImportError as error:  # the 'ocrd' extra is missing: cli() says so in one line
    OCRD_IMPORT_ERROR: Optional[ImportError] = error
    # a base class so that the module still imports (and cli() can explain)
    Processor = object  # type: ignore[assignment,misc]
else:
    OCRD_IMPORT_ERROR = None

__all__ = ["EXECUTABLE", "DEFAULT_CLASS_TYPES", "RegionType", "parse_region_type",
           "class_type_table", "MaskdlaSegment", "cli"]

EXECUTABLE = "ocrd-maskdla-segment"
MISSING_OCRD = ("maskdla: the OCR-D processor needs the 'ocrd' extra: "
                "pip install 'maskdla[ocrd]'")

#: maskdla class -> PAGE region type: "TextRegion:SUBTYPE" (TextRegion/@type) or a region
#: element. The SegmOnto zones (the shipped models' classes) and the synthetic corpus's
#: classes; the ``class_types`` parameter is merged over it.
DEFAULT_CLASS_TYPES: Dict[str, str] = {
    "MainZone": "TextRegion:paragraph",
    "DropCapitalZone": "TextRegion:drop-capital",
    "MarginTextZone": "TextRegion:marginalia",
    "NumberingZone": "TextRegion:page-number",
    "RunningTitleZone": "TextRegion:header",
    "QuireMarksZone": "TextRegion:signature-mark",
    "GraphicZone": "GraphicRegion",
    "DecorationZone": "GraphicRegion",
    "MusicZone": "MusicRegion",
    "TableZone": "TableRegion",
    "TitlePageZone": "TextRegion:heading",
    "StampZone": "TextRegion:other",
    "SealZone": "GraphicRegion",
    "CustomZone": "TextRegion:other",
    "DamageZone": "NoiseRegion",
    "DigitizationArtefactZone": "NoiseRegion",
    # the synthetic corpus (python -m maskdla.synth)
    "staff": "MusicRegion",
    "lyrics": "TextRegion:paragraph",
    "drop-capital": "TextRegion:drop-capital",
}


# --------------------------------------------------------------------------------------
# Class -> PAGE type


class RegionType(NamedTuple):
    """A PAGE region type: its element and, for a TextRegion, its @type; e.g.
    ``RegionType("TextRegion", "paragraph")``, ``RegionType("GraphicRegion", None)``."""

    element: str
    subtype: Optional[str]


def parse_region_type(text: str, class_name: str) -> RegionType:
    """``"TextRegion:paragraph"`` / ``"GraphicRegion"`` -> its :class:`RegionType`.

    Raises:
        InputError: an element PAGE 2019 lacks, or a subtype that is not a PAGE
            TextRegion @type (only TextRegion takes one here), naming the class.
    """
    if not isinstance(text, str):
        raise InputError(f"class_types: {class_name!r} maps to {text!r}, expected a string "
                         "like 'TextRegion:paragraph' or 'GraphicRegion'")
    element, colon, subtype = text.partition(":")
    element, subtype = element.strip(), subtype.strip()
    if element not in REGION_ELEMENTS:
        raise InputError(f"class_types: {class_name!r} maps to {text!r}, whose element is "
                         f"none of PAGE's regions ({', '.join(REGION_ELEMENTS)})")
    if not colon:
        return RegionType(element, None)
    if element != "TextRegion":
        raise InputError(f"class_types: {class_name!r} maps to {text!r}; only TextRegion "
                         "takes a subtype here")
    if subtype not in TEXT_REGION_TYPES:
        raise InputError(f"class_types: {class_name!r} maps to {text!r}, whose subtype is "
                         f"no PAGE TextRegion type ({', '.join(TEXT_REGION_TYPES)})")
    return RegionType(element, subtype)


def class_type_table(overrides: Mapping[str, Any]) -> Dict[str, RegionType]:
    """:data:`DEFAULT_CLASS_TYPES` with ``overrides`` (the ``class_types`` parameter)
    merged over it, parsed: class name -> :class:`RegionType`. InputError on a bad type."""
    merged = {**DEFAULT_CLASS_TYPES, **dict(overrides)}
    return {name: parse_region_type(text, name) for name, text in merged.items()}


def unmapped_classes(classes: Iterable[str], table: Mapping[str, RegionType]) -> List[str]:
    """The classes of ``classes`` without a type in ``table``, in their order."""
    return [name for name in dict.fromkeys(classes) if name not in table]


# --------------------------------------------------------------------------------------
# Geometry and ids


def page_points(polygon: Sequence[Point], image: Any, coords: Dict[str, Any],
                size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Points on the image OCR-D gave (``image``, ``coords`` from ``image_from_page``) ->
    integer points of the PAGE's coordinate system, clipped into the page of ``size``
    (width, height), repeats dropped (PAGE's pc:PointsType holds non-negative integers;
    the points also stay inside the image)."""
    if len(polygon) == 0:
        return []
    absolute = coordinates_for_segment(np.asarray(polygon, dtype=np.float64), image, coords)
    width, height = size
    xs = np.clip(absolute[:, 0], 0, max(0, width - 1)).tolist()
    ys = np.clip(absolute[:, 1], 0, max(0, height - 1)).tolist()
    points: List[Tuple[int, int]] = []
    for x, y in zip(xs, ys):
        if not points or points[-1] != (int(x), int(y)):
            points.append((int(x), int(y)))
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()  # a ring closed by clipping: PAGE rings are open
    return points


def _rounded_ring(polygon: Polygon) -> List[Tuple[int, int]]:
    """A shapely polygon's exterior as integer points, open, repeats dropped."""
    points: List[Tuple[int, int]] = []
    for x, y in list(polygon.exterior.coords)[:-1]:
        point = (int(round(x)), int(round(y)))
        if not points or points[-1] != point:
            points.append(point)
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    return points


def _box(points: Sequence[Tuple[int, int]]) -> Optional[List[Tuple[int, int]]]:
    """The bounding box of integer points as 4 corners; None when it has no area."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if not points or min(xs) == max(xs) or min(ys) == max(ys):
        return None
    return [(min(xs), min(ys)), (max(xs), min(ys)), (max(xs), max(ys)), (min(xs), max(ys))]


def valid_outline(points: Sequence[Tuple[int, int]]) -> Optional[List[Tuple[int, int]]]:
    """Integer points -> an outline OCR-D accepts as Coords: 4 points at least and no
    self-intersection (``ocrd workspace validate``). Fewer points (a speck of a few
    pixels): their bounding box; a ring that crosses itself (rounding, clipping): its
    largest valid piece, else its convex hull (whose corners are input points, integers
    still). None when nothing with an area is left (a line of pixels)."""
    distinct = list(dict.fromkeys(points))
    if len(distinct) < 4:
        return _box(distinct)
    polygon = Polygon(distinct)
    if polygon.is_valid and polygon.area > 0:
        return distinct
    repaired = make_valid(polygon)
    pieces = [piece for piece in getattr(repaired, "geoms", [repaired])
              if isinstance(piece, Polygon) and piece.area > 0]
    if pieces:
        ring = _rounded_ring(max(pieces, key=lambda piece: piece.area))
        if len(ring) >= 4 and Polygon(ring).is_valid:
            return ring
    hull = polygon.convex_hull
    ring = _rounded_ring(hull) if isinstance(hull, Polygon) else []
    return ring if len(ring) >= 4 else _box(distinct)


def containing_outline(outline: List[Tuple[int, int]],
                       parts: Sequence[List[Tuple[int, int]]]) -> List[Tuple[int, int]]:
    """A region's outline grown to hold the outlines of its lines: OCR-D (and PAGE) want a
    line inside its region, and the line model's lines may reach past the region model's
    outline; the line is what a transcription reads, so the region grows, not the line.
    Unchanged when every line lies inside already (within OCR-D's slack of 1.5 px); the
    union's hull when the union falls apart."""
    region = make_valid(Polygon(outline))
    pieces = [make_valid(Polygon(part)) for part in parts]
    if all(piece.within(region.buffer(1.0)) for piece in pieces):
        return outline
    union = unary_union([region, *pieces])
    if not isinstance(union, Polygon):
        union = union.convex_hull
    return valid_outline(_rounded_ring(union)) or outline


def baseline_inside(baseline: Sequence[Tuple[int, int]], outline: Sequence[Tuple[int, int]]
                    ) -> Optional[List[Tuple[int, int]]]:
    """A baseline cut to its line's outline (its longest piece inside): OCR-D wants a
    Baseline within its TextLine's Coords, and a predicted baseline's ends may reach a
    few pixels past the traced outline. Cut to the outline shrunk by a pixel where that
    leaves something, so that rounding and OCR-D's own simplification (1 px) keep it
    inside. None for fewer than 2 points."""
    if len(set(baseline)) < 2:
        return None
    line, region = LineString(baseline), make_valid(Polygon(outline))
    inner = region.buffer(-1.0)
    inner = region if inner.is_empty else inner
    if line.within(inner):
        return list(baseline)
    inside = line.intersection(inner)
    pieces = [piece for piece in getattr(inside, "geoms", [inside])
              if isinstance(piece, LineString) and piece.length > 0]
    if not pieces:
        return None
    points: List[Tuple[int, int]] = []
    for x, y in max(pieces, key=lambda piece: piece.length).coords:
        point = (int(round(x)), int(round(y)))
        if not points or points[-1] != point:
            points.append(point)
    return points if len(points) >= 2 else None


def used_ids(pcgts: "OcrdPage") -> Set[str]:
    """Every ``@id`` of a PAGE document (regions at any depth, lines, words, glyphs,
    reading-order groups): new elements must take other ones, PAGE ids are xs:ID."""
    root = etree.fromstring(to_xml(pcgts).encode("utf-8"))
    return {element.get("id") for element in root.iter() if element.get("id")}


def fresh_id(base: str, used: Set[str]) -> str:
    """``base``, else ``base_2``, ``base_3``, ... whichever is not in ``used``; added to it."""
    candidate, number = base, 1
    while candidate in used:
        number += 1
        candidate = f"{base}_{number}"
    used.add(candidate)
    return candidate


def remove_regions(page: "PageType") -> None:
    """Drop every region (with its lines) and the reading order of a PAGE Page; Border,
    PrintSpace and the rest stay."""
    for element in REGION_ELEMENTS:
        getattr(page, f"set_{element}")([])
    page.set_ReadingOrder(None)


def image_tensor(image: Any) -> "torch.Tensor":
    """A PIL image from OCR-D -> UInt8[3, H, W]. As pixels, not as a PIL image: maskdla
    turns a PIL image by its EXIF orientation, OCR-D's coordinates do not, and the polygons
    must be in OCR-D's frame."""
    import torch  # loaded by setup() already

    pixels = np.array(image.convert("RGB"))  # a writable copy, as torch wants
    return torch.from_numpy(pixels).permute(2, 0, 1)


# --------------------------------------------------------------------------------------
# The processor


class _StopOnInputError(BaseException):
    """Carries an :class:`InputError` of a page past OCR-D's page handling, which logs any
    Exception with its traceback and goes on with the next page; bad input stops the run
    instead, one line and exit code 2 (:func:`cli`). A BaseException so that no
    ``except Exception`` of ocrd on the way catches it."""

    def __init__(self, error: InputError):
        super().__init__(str(error))
        self.error = error


class _PageTask:
    """A page task of OCR-D's executor whose ``result()`` turns an InputError into
    :class:`_StopOnInputError` (the rest passes as it is, for OCR-D to handle)."""

    def __init__(self, task: Any):
        self.task = task

    def result(self) -> Any:
        try:
            return self.task.result()
        except InputError as error:
            raise _StopOnInputError(error) from None


class MaskdlaSegment(Processor):  # type: ignore[misc,valid-type]
    """Regions, text lines and their reading order with maskdla's Mask R-CNN models."""

    # one page at a time: torch already uses every core for one page, and forked copies
    # of a loaded model would only multiply its memory
    max_workers = 1

    @property
    def executable(self) -> str:
        return EXECUTABLE

    @property
    def parameter(self) -> Optional[Dict[str, Any]]:
        """The runtime parameters (OCR-D's, read-only once set)."""
        return Processor.parameter.fget(self)

    @parameter.setter
    def parameter(self, parameter: Dict[str, Any]) -> None:
        # OCR-D's own check, first: its failure is a ValueError with a traceback
        report = ParameterValidator(self.ocrd_tool).validate(dict(parameter))
        if not report.is_valid:
            raise InputError(f"bad parameter(s): {'; '.join(report.errors)}")
        Processor.parameter.fset(self, parameter)

    def setup(self) -> None:
        """Load the models once (the ``checkpoint`` and ``lines`` parameters) and the class
        table. InputError: a checkpoint that is not there or not maskdla's, a bad device,
        a bad ``class_types`` entry, or a region class without a PAGE type."""
        # imported here: torch and the models cost seconds that -J, -h and bad file
        # groups need not wait for
        from maskdla.prediction import PagePipeline, PostProcess, Predictor

        parameter = dict(self.parameter)
        self.types = class_type_table(parameter["class_types"])
        options = dict(device=parameter["device"],
                       postprocess=PostProcess(score_thresh=parameter["score_threshold"]))
        regions = Predictor(parameter["checkpoint"], **options)
        lines = Predictor(parameter["lines"], **options) if parameter["lines"] else None
        self.pipeline = PagePipeline(regions=regions, lines=lines)
        # the regions made for lines outside every region take orphan_label
        wanted = list(regions.classes) + ([self.pipeline.orphan_label] if lines else [])
        missing = unmapped_classes(wanted, self.types)
        if missing:
            raise InputError(f"{parameter['checkpoint']}: no PAGE region type for the "
                             f"class(es) {', '.join(missing)}; give them in the class_types "
                             "parameter, e.g. -P class_types "
                             f"'{{\"{missing[0]}\": \"TextRegion:paragraph\"}}'")

    def process_workspace_handle_page_task(self, page_id: str, input_files: List[Any],
                                           task: Any) -> Any:
        """OCR-D's page handling, except that bad input stops the run (see
        :class:`_StopOnInputError`)."""
        return super().process_workspace_handle_page_task(page_id, input_files,
                                                           _PageTask(task))

    def process_page_file(self, *input_files: Any) -> None:
        """OCR-D's page processing, after checking that the page's input files exist
        (OCR-D would log a missing file and go on with an empty page)."""
        for input_file in input_files:
            if input_file is None:
                continue
            local = input_file.local_filename
            if local is not None and not Path(local).is_file():
                raise InputError(f"page {input_file.pageId}: input file {input_file.ID} of "
                                 f"{input_file.fileGrp} is missing", local)
        super().process_page_file(*input_files)

    def process_page_pcgts(self, *input_pcgts: Optional["OcrdPage"],
                           page_id: Optional[str] = None) -> "OcrdPageResult":
        """One page: predict on its image, add the regions, lines and reading order to its
        PAGE (the input's, changed in place), and return it."""
        pcgts = input_pcgts[0]
        page = pcgts.get_Page()
        try:
            image, coords, _ = self.workspace.image_from_page(
                page, page_id, feature_filter="binarized")  # the models saw colour scans
        except (OSError, ValueError) as error:
            raise InputError(f"page {page_id}: cannot read its image "
                             f"({error_line(error)})", page.get_imageFilename()) from None
        predicted = self.pipeline.predict(image_tensor(image))
        if self.parameter["overwrite"]:
            remove_regions(page)
        had_order = page.get_ReadingOrder() is not None
        kept = [region.id for region in page.get_AllRegions(depth=1)]
        written = self.add_regions(page, predicted, image, coords, used_ids(pcgts))
        if not had_order:
            # the new regions in maskdla's order, then those the page held, in file order
            order = [written[region.id] for region in predicted.regions if region.id in written]
            add_reading_order(page, order + kept, used_ids(pcgts))
        self.logger.info("page %s: %d regions, %d lines", page_id, len(written),
                         sum(len(region.get_TextLine()) for region in page.get_TextRegion()
                             if region.id in written.values()))
        return OcrdPageResult(pcgts)

    def add_regions(self, page: "PageType", predicted: Page, image: Any,
                    coords: Dict[str, Any], used: Set[str]) -> Dict[str, str]:
        """Add the predicted regions (and their lines) to ``page``.

        Returns:
            maskdla region id -> PAGE id of the regions written (regions thinner than a
            pixel once in page coordinates are left out, with their lines).
        """
        size = (page.get_imageWidth(), page.get_imageHeight())
        lines_of: Dict[str, List[TextLine]] = {}
        for line in predicted.lines:
            lines_of.setdefault(line.region_id, []).append(line)
        written: Dict[str, str] = {}
        for number, region in enumerate(predicted.regions, 1):
            points = valid_outline(page_points(region.polygon, image, coords, size))
            if points is None:
                continue
            kind = self.types[region.label].element
            lines = [placed for placed in (self.place_line(line, image, coords, size)
                                           for line in lines_of.get(region.id, []))
                     if placed is not None]
            if kind != "TextRegion" and lines:  # the one PAGE region that holds TextLines
                self.logger.warning("%d lines of a %s region left out: a %s holds no lines "
                                    "(class_types)", len(lines), region.label, kind)
                lines = []
            region_id = fresh_id(f"maskdla_r{number}", used)
            points = containing_outline(points, [outline for _, outline, _ in lines])
            element = self.region_element(region, region_id, points)
            getattr(page, f"add_{kind}")(element)
            written[region.id] = region_id
            for line_number, (line, outline, baseline) in enumerate(lines, 1):
                element.add_TextLine(self.line_element(
                    line, fresh_id(f"{region_id}_l{line_number}", used), outline, baseline))
        return written

    @staticmethod
    def place_line(line: TextLine, image: Any, coords: Dict[str, Any], size: Tuple[int, int]
                   ) -> Optional[Tuple[TextLine, List[Tuple[int, int]],
                                       Optional[List[Tuple[int, int]]]]]:
        """A predicted line in page coordinates: ``(line, outline, baseline or None)``;
        None for a line thinner than a pixel."""
        outline = valid_outline(page_points(line.polygon, image, coords, size))
        if outline is None:
            return None
        baseline = page_points(line.baseline, image, coords, size)
        return line, outline, baseline_inside(baseline, outline)

    def region_element(self, region: Region, region_id: str,
                       points: List[Tuple[int, int]]) -> Any:
        """A PAGE region element for a predicted region: its element and @type from the
        class table, Coords (with the detection score as @conf) and the class as custom
        structure type when ``segmonto_types``."""
        kind, subtype = self.types[region.label]
        arguments: Dict[str, Any] = dict(id=region_id, Coords=CoordsType(
            points=points_from_polygon(points), conf=_conf(region.score)))
        if subtype is not None:
            arguments["type_"] = subtype
        if self.parameter["segmonto_types"]:
            arguments["custom"] = structure_custom(region.label)
        return getattr(ocrd_page, f"{kind}Type")(**arguments)

    def line_element(self, line: TextLine, line_id: str, outline: List[Tuple[int, int]],
                     baseline: Optional[List[Tuple[int, int]]]) -> "TextLineType":
        """A TextLine of a predicted line (its outline and baseline in page coordinates):
        Coords (the score as @conf), Baseline when there is one, and its class as custom
        structure type when ``segmonto_types``."""
        element = TextLineType(
            id=line_id,
            Coords=CoordsType(points=points_from_polygon(outline), conf=_conf(line.score)),
            Baseline=BaselineType(points=points_from_polygon(baseline)) if baseline else None)
        if self.parameter["segmonto_types"]:
            element.set_custom(structure_custom(line.label))
        return element


def _conf(score: Optional[float]) -> Optional[float]:
    """A detection score as PAGE's @conf (in [0, 1]); None for regions no model found
    (those made for lines outside every region)."""
    return None if score is None else round(min(1.0, max(0.0, float(score))), 4)


def add_reading_order(page: "PageType", region_ids: Sequence[str], used: Set[str]) -> None:
    """Give ``page`` a ReadingOrder: one OrderedGroup of ``region_ids`` in that order
    (maskdla's predicted order); nothing when there are no regions (PAGE wants a group to
    hold one reference at least)."""
    if not region_ids:
        return
    group = OrderedGroupType(id=fresh_id("maskdla_reading_order", used),
                             caption="Regions reading order")
    for index, region_id in enumerate(region_ids):
        group.add_RegionRefIndexed(RegionRefIndexedType(index=index, regionRef=region_id))
    page.set_ReadingOrder(ReadingOrderType(OrderedGroup=group))


# --------------------------------------------------------------------------------------
# Command line


def check_file_groups(options: Mapping[str, Any]) -> None:
    """Run OCR-D's own file-group check (an input group in the METS, an output group not
    yet there unless ``--overwrite``) before OCR-D does, so that a failure is one line:
    OCR-D raises a bare Exception with a traceback. Only for a local METS file; a METS
    server or a remote METS is left to OCR-D.

    Raises:
        InputError: a METS file that is not there, or the check's errors.
    """
    if not options.get("input_file_grp") or options.get("mets_server_url"):
        return
    resolver = Resolver()
    working_dir, mets, _, _ = resolver.resolve_mets_arguments(
        options.get("working_dir"), options.get("mets"), None, None)
    if "://" in mets and not mets.startswith("file://"):
        return
    mets_path = Path(mets[len("file://"):] if mets.startswith("file://") else mets)
    if not mets_path.is_file():
        raise InputError("METS file not found (-m/--mets)", mets_path)
    workspace = resolver.workspace_from_url(str(mets_path), working_dir)
    report = WorkspaceValidator.check_file_grp(
        workspace, options["input_file_grp"],
        "" if options.get("overwrite") else options.get("output_file_grp"),
        options.get("page_id"))
    if not report.is_valid:
        raise InputError("; ".join(report.errors), mets_path)


#: the options that only print something (no workspace is processed)
_INFORMATION_OPTIONS = ("help", "version", "dump_json", "dump_module_dir", "list_resources",
                        "show_resource", "resolve_resource", "subcommand", "queue", "database")


def _run(**options: Any) -> None:
    """The click command's body: check the file groups, then OCR-D runs the processor.
    Bad input -> one line ``maskdla: error: ...`` on stderr, exit code 2."""
    try:
        if sys.argv[1:] and not any(options.get(name) for name in _INFORMATION_OPTIONS):
            check_file_groups(options)
        ocrd_cli_wrap_processor(MaskdlaSegment, **options)
    except InputError as error:
        _bad_input(str(error))
    except _StopOnInputError as stop:
        _bad_input(str(stop.error))


def _bad_input(message: str) -> None:
    print(f"maskdla: error: {one_line(message)}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def cli() -> None:
    """The console script ``ocrd-maskdla-segment`` (OCR-D's processor command line:
    ``-m METS -I IN -O OUT -P NAME VALUE``, ``-J``, ``-h``, ...). Without ocrd installed:
    one line naming the extra, exit code 2."""
    if OCRD_IMPORT_ERROR is not None:
        print(MISSING_OCRD, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    @click.command(name=EXECUTABLE)
    @ocrd_cli_options
    def command(**options: Any) -> None:
        _run(**options)

    command(prog_name=EXECUTABLE)


if __name__ == "__main__":
    cli()
