"""``ocrd-maskdla-segment``, the OCR-D processor (maskdla/ocrd.py), run as OCR-D runs it: a
workspace made with the ``ocrd workspace`` command line, the processor's console script in
a subprocess, the output checked with the PAGE 2019 schema and ``ocrd workspace validate``.

Skipped without the ``ocrd`` extra. The real-page test needs ../shared/realdata (skipped
without it); the synthetic page and the bad-input tests run everywhere.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

pytest.importorskip("ocrd")
etree = pytest.importorskip("lxml.etree")

import maskdla  # noqa: E402
from maskdla.ocrd import (DEFAULT_CLASS_TYPES, EXECUTABLE, MISSING_OCRD,  # noqa: E402
                          parse_region_type)

REPOSITORY = Path(__file__).resolve().parents[1]
TOOL_JSON = REPOSITORY / "maskdla" / "ocrd-tool.json"
PAGE_XSD = REPOSITORY / "tests" / "data" / "pagecontent-2019-07-15.xsd"
REAL_PAGES = REPOSITORY.parent / "shared" / "realdata" / "htromance" / "test"
PC = "{http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15}"
METS = "{http://www.loc.gov/METS/}"
PAGE_MIMETYPE = "application/vnd.prima.page+xml"


def run(arguments: Sequence[str], cwd: Path = REPOSITORY, timeout: int = 300
        ) -> subprocess.CompletedProcess:
    """A command's completed process (text stdout/stderr), never raising on its exit code.
    A console script (``ocrd``, ``ocrd-maskdla-segment``) is taken from this Python's own
    scripts folder first: pip may put it off PATH (a venv not activated, --user)."""
    command, *rest = arguments
    beside = Path(sys.executable).parent / command
    command = str(beside) if beside.is_file() else (shutil.which(command) or command)
    return subprocess.run([command, *rest], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def ocrd_workspace(workspace: Path, *arguments: str) -> None:
    """``ocrd workspace -d WORKSPACE ARGUMENTS...``, which must succeed."""
    done = run(["ocrd", "workspace", "-d", str(workspace), *arguments])
    assert done.returncode == 0, done.stderr


def make_workspace(root: Path, images: Sequence[Path]) -> Path:
    """A workspace ``root`` made with the ocrd CLI: each image copied into OCR-D-IMG/ and
    added as page PHYS_000N of file group OCR-D-IMG."""
    root.mkdir(parents=True)
    ocrd_workspace(root, "init")
    ocrd_workspace(root, "set-id", f"urn:maskdla-test:{root.name}")
    (root / "OCR-D-IMG").mkdir()
    for number, image in enumerate(images, 1):
        target = root / "OCR-D-IMG" / f"IMG_{number:04d}{image.suffix}"
        shutil.copy(image, target)
        mimetype = "image/png" if image.suffix == ".png" else "image/jpeg"
        ocrd_workspace(root, "add", "-G", "OCR-D-IMG", "-i", f"IMG_{number:04d}",
                       "-g", f"PHYS_{number:04d}", "-m", mimetype,
                       str(target.relative_to(root)), "--force")
    return root


def segment(workspace: Path, input_group: str, output_group: str,
            *parameters: str) -> subprocess.CompletedProcess:
    """``ocrd-maskdla-segment -m WS/mets.xml -I IN -O OUT -P NAME VALUE ...`` (CPU)."""
    pairs: List[str] = []
    for name, value in zip(parameters[::2], parameters[1::2]):
        pairs += ["-P", name, value]
    return run([EXECUTABLE, "-m", str(workspace / "mets.xml"), "-I", input_group,
                "-O", output_group, *pairs])


def page_files(workspace: Path, group: str) -> List[Path]:
    """The PAGE files the METS lists in ``group``, in page order."""
    mets = etree.parse(str(workspace / "mets.xml"))
    files = mets.findall(f".//{METS}fileGrp[@USE='{group}']/{METS}file")
    assert all(file.get("MIMETYPE") == PAGE_MIMETYPE for file in files)
    return [workspace / file.find(f"{METS}FLocat").get(
        "{http://www.w3.org/1999/xlink}href") for file in files]


def assert_schema_valid(path: Path) -> etree._ElementTree:
    """The PAGE file parsed, after asserting it validates against the PAGE 2019 schema."""
    schema = etree.XMLSchema(etree.parse(str(PAGE_XSD)))
    document = etree.parse(str(path))
    assert schema.validate(document), f"{path.name}: {schema.error_log}"
    return document


def assert_workspace_valid(workspace: Path) -> None:
    """``ocrd workspace validate`` finds no error (notices are fine), PAGE coordinates
    checked both ways: lines inside their regions and baselines inside their lines.

    Skipped checks: ``url``, because ``ocrd workspace add`` itself records a workspace's
    local files by relative path, which that check calls a non-URI URL; and
    ``pixel_density``, the scans' JPEG headers say 1 dpi (the images, not the processor's
    output)."""
    done = run(["ocrd", "workspace", "-d", str(workspace), "validate", "-s", "url",
                "-s", "pixel_density", "--page-coordinate-consistency", "both"])
    report = etree.fromstring(done.stdout.strip().encode())
    errors = [error.text for error in report.iter("error")]
    assert done.returncode == 0 and report.get("valid") == "true" and not errors, errors


def assert_bad_input(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2, no traceback, and stderr's last line is maskdla's one line naming the
    problem by ``words``."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("maskdla: error: "), last
    for word in words:
        assert word in last, last


def regions_of(document: etree._ElementTree) -> Dict[str, etree._Element]:
    """Every region element of a PAGE document by id."""
    page = document.find(f"{PC}Page")
    return {element.get("id"): element for element in page if element.tag.endswith("Region")}


# ------------------------------------------------------------------------------- -J


def test_dump_json_is_the_packaged_tool_description_and_validates():
    from ocrd_validators import OcrdToolValidator

    raw = json.loads(TOOL_JSON.read_text(encoding="utf-8"))
    assert raw["version"] == maskdla.__version__
    report = OcrdToolValidator.validate(raw)  # fills in the schema's defaults, as ocrd does
    assert report.is_valid and not report.warnings, report.to_xml()
    done = run([EXECUTABLE, "-J"], timeout=120)
    assert done.returncode == 0, done.stderr
    dumped = json.loads(done.stdout)
    assert dumped == raw["tools"][EXECUTABLE]
    assert dumped["categories"] == ["Layout analysis"]
    assert dumped["steps"] == ["layout/segmentation/region", "layout/segmentation/line"]
    assert {name: spec["default"] for name, spec in dumped["parameters"].items()} == {
        "checkpoint": "segmonto-base", "lines": "", "class_types": {},
        "segmonto_types": True, "overwrite": False, "score_threshold": 0.5, "device": "cpu"}
    assert all(spec["description"] for spec in dumped["parameters"].values())


def test_every_default_class_type_is_a_page_type():
    parsed = {name: parse_region_type(text, name) for name, text in DEFAULT_CLASS_TYPES.items()}
    assert parsed["MainZone"] == ("TextRegion", "paragraph")
    assert parsed["MusicZone"] == ("MusicRegion", None)
    assert parsed["staff"] == ("MusicRegion", None)


def test_without_ocrd_the_script_names_the_extra():
    # the console script's function, with ocrd made unimportable
    code = ("import sys; sys.modules['ocrd'] = None; sys.argv = ['ocrd-maskdla-segment', '-J']; "
            "from maskdla.ocrd import cli; cli()")
    done = run([sys.executable, "-c", code], timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == MISSING_OCRD
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ a real workspace


@pytest.fixture(scope="module")
def real_workspace(tmp_path_factory) -> Path:
    """Two HTRomance test pages in a workspace, segmented once with regions and lines."""
    if not REAL_PAGES.is_dir():
        pytest.skip(f"{REAL_PAGES} is absent (the shared real data)")
    images = sorted(REAL_PAGES.glob("*.jpg"))[:2]
    workspace = make_workspace(tmp_path_factory.mktemp("real") / "ws", images)
    done = segment(workspace, "OCR-D-IMG", "OCR-D-SEG",
                   "checkpoint", "segmonto-base", "lines", "segmonto-lines")
    assert done.returncode == 0, done.stderr
    return workspace


@pytest.mark.slow
def test_real_pages_get_typed_regions_lines_and_baselines(real_workspace):
    files = page_files(real_workspace, "OCR-D-SEG")
    assert len(files) == 2
    for path in files:
        document = assert_schema_valid(path)
        page = document.find(f"{PC}Page")
        main = [region for region in page.iter(f"{PC}TextRegion")
                if region.get("type") == "paragraph"
                and region.get("custom") == "structure {type:MainZone;}"]
        assert main, f"{path.name}: no MainZone paragraph"
        lines = list(page.iter(f"{PC}TextLine"))
        assert lines and all(line.find(f"{PC}Baseline") is not None for line in lines)
        # every region is in the reading order, in maskdla's order
        order = [ref.get("regionRef") for ref in page.iter(f"{PC}RegionRefIndexed")]
        assert sorted(order) == sorted(regions_of(document))
        assert [int(ref.get("index")) for ref in page.iter(f"{PC}RegionRefIndexed")] == \
            list(range(len(order)))
        # OCR-D's own record of the step, in the PAGE file
        item = document.find(f"{PC}Metadata/{PC}MetadataItem")
        assert item is not None and item.get("value") == EXECUTABLE
        assert item.get("type") == "processingStep"
        labels = {label.get("type"): label.get("value") for label in item.iter(f"{PC}Label")}
        assert labels["lines"] == "segmonto-lines" and labels[EXECUTABLE] == maskdla.__version__


@pytest.mark.slow
def test_real_workspace_validates_and_the_mets_names_the_agent(real_workspace):
    assert_workspace_valid(real_workspace)
    mets = etree.parse(str(real_workspace / "mets.xml"))
    names = [agent.findtext(f"{METS}name") for agent in mets.iter(f"{METS}agent")]
    assert f"{EXECUTABLE} v{maskdla.__version__}" in names


# -------------------------------------------------------------- a synthetic workspace

KEPT_POINTS = "10,10 120,10 120,60 10,60"


def write_ground_truth(workspace: Path, image_name: str) -> None:
    """File group OCR-D-GT: a PAGE file for page PHYS_0001 holding one region, ``gt_kept``
    (no reading order), on the page's image."""
    from PIL import Image

    width, height = Image.open(workspace / image_name).size
    (workspace / "OCR-D-GT").mkdir()
    path = workspace / "OCR-D-GT" / "GT_0001.xml"
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15" pcGtsId="GT_0001">
  <Metadata><Creator>test</Creator><Created>2024-01-01T00:00:00</Created>
    <LastChange>2024-01-01T00:00:00</LastChange></Metadata>
  <Page imageFilename="{image_name}" imageWidth="{width}" imageHeight="{height}">
    <TextRegion id="gt_kept" type="heading"><Coords points="{KEPT_POINTS}"/></TextRegion>
  </Page>
</PcGts>
""", encoding="utf-8")
    ocrd_workspace(workspace, "add", "-G", "OCR-D-GT", "-i", "GT_0001", "-g", "PHYS_0001",
                   "-m", PAGE_MIMETYPE, "OCR-D-GT/GT_0001.xml", "--force")


@pytest.fixture(scope="module")
def synthetic_workspace(tmp_path_factory) -> Path:
    """One synthetic page (maskdla.data.synthetic) as OCR-D-IMG, and OCR-D-GT: its PAGE
    holding one region of its own."""
    from maskdla.data.synthetic import render_page

    root = tmp_path_factory.mktemp("synthetic")
    image, _ = render_page(7, width=480)
    image.save(root / "page.png")
    workspace = make_workspace(root / "ws", [root / "page.png"])
    write_ground_truth(workspace, "OCR-D-IMG/IMG_0001.png")
    return workspace


@pytest.mark.slow
def test_synthetic_page_keeps_the_input_regions_unless_overwrite(synthetic_workspace):
    workspace = synthetic_workspace
    done = segment(workspace, "OCR-D-GT", "OCR-D-KEEP", "overwrite", "false")
    assert done.returncode == 0, done.stderr
    [kept_file] = page_files(workspace, "OCR-D-KEEP")
    kept = regions_of(assert_schema_valid(kept_file))
    assert kept["gt_kept"].find(f"{PC}Coords").get("points") == KEPT_POINTS
    assert kept["gt_kept"].get("type") == "heading"
    new = [region_id for region_id in kept if region_id != "gt_kept"]
    assert all(region_id.startswith("maskdla_r") for region_id in new)
    # the page had no reading order: the new regions in maskdla's order, then the kept one
    order = [ref.get("regionRef") for ref in etree.parse(str(kept_file)).iter(
        f"{PC}RegionRefIndexed")]
    assert order == new + ["gt_kept"]

    done = segment(workspace, "OCR-D-GT", "OCR-D-NEW", "overwrite", "true")
    assert done.returncode == 0, done.stderr
    [new_file] = page_files(workspace, "OCR-D-NEW")
    replaced = regions_of(assert_schema_valid(new_file))
    assert "gt_kept" not in replaced
    assert sorted(replaced) == sorted(new)  # the same model on the same page
    assert_workspace_valid(workspace)


# ------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def unknown_class_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a seeded, untrained tiny model whose classes no table maps."""
    import torch

    from maskdla.model import build_model

    torch.manual_seed(0)
    classes = ["foo", "bar"]
    model = build_model("vovnet19slim", len(classes) + 1, min_size=64, max_size=128)
    path = tmp_path_factory.mktemp("model") / "foo.pth"
    torch.save({"model": model.state_dict(), "optimizer": None, "scheduler": None,
                "scaler": None, "epoch": 0, "iteration": 0, "rng": None,
                "config": {"backbone": "vovnet19slim", "norm": None, "min_size": [64],
                           "max_size": 128, "classes": classes},
                "classes": classes}, path)
    return path


def test_a_missing_input_file_group_is_one_line(synthetic_workspace):
    done = segment(synthetic_workspace, "OCR-D-NOPE", "OCR-D-OUT")
    assert_bad_input(done, "OCR-D-NOPE", "not in METS")


def test_a_checkpoint_that_does_not_exist_or_is_none_is_one_line(synthetic_workspace,
                                                                  tmp_path):
    missing = tmp_path / "no-such-model.pth"
    done = segment(synthetic_workspace, "OCR-D-IMG", "OCR-D-OUT", "checkpoint", str(missing))
    assert_bad_input(done, str(missing), "not found")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    done = segment(synthetic_workspace, "OCR-D-IMG", "OCR-D-OUT", "checkpoint", str(garbage))
    assert_bad_input(done, str(garbage), "checkpoint")


def test_classes_without_a_page_type_are_one_line(synthetic_workspace,
                                                   unknown_class_checkpoint):
    done = segment(synthetic_workspace, "OCR-D-IMG", "OCR-D-OUT",
                   "checkpoint", str(unknown_class_checkpoint))
    assert_bad_input(done, "foo, bar", "class_types")
    # the class_types parameter is the way out: mapped, the same model runs
    done = segment(synthetic_workspace, "OCR-D-IMG", "OCR-D-FOO",
                   "checkpoint", str(unknown_class_checkpoint),
                   "class_types", json.dumps({"foo": "TextRegion:paragraph",
                                              "bar": "GraphicRegion"}))
    assert done.returncode == 0, done.stderr
    assert len(page_files(synthetic_workspace, "OCR-D-FOO")) == 1


def test_a_page_whose_image_is_missing_is_one_line(tmp_path):
    from maskdla.data.synthetic import render_page

    image, _ = render_page(3, width=160)
    image.save(tmp_path / "page.png")
    workspace = make_workspace(tmp_path / "ws", [tmp_path / "page.png"])
    (workspace / "OCR-D-IMG" / "IMG_0001.png").unlink()
    done = segment(workspace, "OCR-D-IMG", "OCR-D-OUT")
    assert_bad_input(done, "PHYS_0001", "missing")
    assert not page_files(workspace, "OCR-D-OUT")
