"""The in-memory page model shared by the PAGE-XML reader/writer, COCO conversion,
the synthetic corpus and prediction.

Coordinates are in pixels of the original page image, x to the right, y down.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

Point = Tuple[float, float]


@dataclass
class Region:
    """One layout region.

    Attributes:
        id: the region's id in the PAGE file (unique within a page).
        kind: PAGE element name, e.g. ``"TextRegion"`` or ``"MusicRegion"``.
        label: class name after class resolution, e.g. ``"lyrics"``.
        polygon: outline as (x, y) points, not closed (first point not repeated).
        score: detection confidence in [0, 1]; ``None`` for ground truth.
    """

    id: str
    kind: str
    label: str
    polygon: List[Point]
    score: Optional[float] = None


#: class of a text line that its file does not tag (SegmOnto's default line type)
DEFAULT_LINE_LABEL = "DefaultLine"


@dataclass
class TextLine:
    """A text line inside a region: the unit a transcription pipeline reads, and the
    training target of a line model (``--task lines``).

    Attributes:
        id: the line's id in its file.
        region_id: id of the region that holds it.
        polygon: the line's outline (not closed); may be empty where a file gives only
            the baseline.
        baseline: the baseline as a polyline, left to right; empty where the file has none.
        text: the transcription, if the file has one.
        label: line class (SegmOnto line type: ALTO ``TAGREFS``, PAGE ``custom`` structure
            type), :data:`DEFAULT_LINE_LABEL` when untagged.
        score: detection confidence in [0, 1]; ``None`` for ground truth.
    """

    id: str
    region_id: str
    polygon: List[Point]
    baseline: List[Point] = field(default_factory=list)
    text: Optional[str] = None
    label: str = DEFAULT_LINE_LABEL
    score: Optional[float] = None


@dataclass
class Page:
    """A page: its image, size and regions.

    Attributes:
        image_filename: the image's file name as written in the PAGE file.
        width, height: image size in pixels.
        regions: the regions, in reading order when the file gives one, else file order.
        lines: text lines of all regions.
        reading_order: region ids in reading order (empty when the file has none).
    """

    image_filename: str
    width: int
    height: int
    regions: List[Region] = field(default_factory=list)
    lines: List[TextLine] = field(default_factory=list)
    reading_order: List[str] = field(default_factory=list)
