"""Shipped models (maskdla.zoo): packed, named, checked at load, usable wherever a checkpoint is."""
import json

import pytest
import torch

from maskdla import zoo
from maskdla.checkpoint import load_checkpoint, load_model
from maskdla.errors import InputError
from maskdla.models import main as models_main


@pytest.fixture
def shipped_tiny(tiny_checkpoint, tmp_path, monkeypatch):
    """A tiny checkpoint packed as a shipped model named "tiny-test" in a private weights
    folder; returns (name, the original checkpoint)."""
    checkpoint = torch.load(tiny_checkpoint(64, 96), weights_only=True)
    monkeypatch.setattr(zoo, "WEIGHTS_FOLDER", tmp_path)
    sha256, size = zoo.pack(checkpoint, tmp_path / "tiny.safetensors")
    assert size == (tmp_path / "tiny.safetensors").stat().st_size
    monkeypatch.setitem(zoo.SHIPPED, "tiny-test", zoo.ShippedModel("tiny.safetensors", sha256,
                                                                   "a test model"))
    return "tiny-test", checkpoint


def test_a_shipped_name_loads_as_a_checkpoint_in_float32_close_to_the_original(shipped_tiny):
    name, original = shipped_tiny
    loaded = load_checkpoint(name)
    assert loaded["classes"] == original["classes"] and loaded["shipped"] == name
    assert set(loaded["model"]) == set(original["model"])
    for key, value in original["model"].items():
        got = loaded["model"][key]
        assert got.dtype == value.dtype and got.shape == value.shape
        if value.is_floating_point():  # float16 on disk: within half precision
            torch.testing.assert_close(got, value, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(got, value)
    model, checkpoint = load_model(name)
    assert checkpoint["config"].backbone == "vovnet19slim" and not model.training


def test_a_damaged_or_missing_weights_file_is_refused_by_its_checksum(shipped_tiny, tmp_path):
    name, _ = shipped_tiny
    path = tmp_path / "tiny.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum .* is not the recorded .*damaged or was replaced"):
        load_checkpoint(name)
    path.unlink()
    with pytest.raises(InputError, match="weights file is missing"):
        load_checkpoint(name)


def test_a_file_named_like_a_shipped_model_is_read_as_the_file(shipped_tiny, tmp_path,
                                                                monkeypatch):
    name, _ = shipped_tiny
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a PyTorch file|cannot load checkpoint"):
        load_checkpoint(name)


def test_an_unknown_name_says_which_models_are_shipped():
    with pytest.raises(InputError, match=r"not found \(nor a shipped model: .*segmonto-base"):
        load_checkpoint("no-such-model")


def test_the_listing_names_each_model_and_pack_prints_the_checksum(shipped_tiny, tiny_checkpoint,
                                                                    tmp_path, capsys):
    name, _ = shipped_tiny
    assert models_main([]) == 0
    listing = capsys.readouterr().out
    assert f"{name}: vovnet19slim" in listing and "a test model" in listing
    out = tmp_path / "packed.safetensors"
    assert models_main(["pack", str(tiny_checkpoint(64, 96)), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sha256"] == zoo.file_sha256(out) and printed["bytes"] == out.stat().st_size


def test_packing_keeps_the_model_settings_and_drops_the_run_facts(tiny_checkpoint, tmp_path):
    checkpoint = torch.load(tiny_checkpoint(64, 96), weights_only=True)
    checkpoint["config"] = dict(checkpoint["config"], data="/home/someone/pages",
                                out="/home/someone/run")
    zoo.pack(checkpoint, tmp_path / "m.safetensors", half=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as weights:
        config = json.loads(weights.metadata()["config"])
        assert weights.get_tensor(next(iter(weights.keys()))).dtype == torch.float32
    assert config["data"] is None and config["out"] is None
    assert config["min_size"] == [64] and config["backbone"] == "vovnet19slim"


def test_predict_takes_a_shipped_name_and_records_it_in_the_manifest(shipped_tiny, tmp_path):
    from PIL import Image

    from maskdla.predict import main as predict_main

    name, _ = shipped_tiny
    Image.new("RGB", (80, 64), "white").save(tmp_path / "page.jpg")
    assert predict_main([name, str(tmp_path / "page.jpg"), "--out", str(tmp_path / "out"),
                         "--device", "cpu", "--workers", "0"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["checkpoint"] == name
    assert (tmp_path / "out" / "page" / "page.xml").is_file()


def test_the_shipped_base_model_loads_with_its_recorded_checksum():
    shipped = zoo.SHIPPED["segmonto-base"]
    assert shipped.path.stat().st_size < 26e6  # the package's budget for it
    assert zoo.file_sha256(shipped.path) == shipped.sha256
    model, checkpoint = load_model("segmonto-base")
    assert checkpoint["classes"] == ["MainZone", "DropCapitalZone", "MarginTextZone",
                                     "NumberingZone", "RunningTitleZone"]
    assert checkpoint["config"].backbone == "vovnet19slim"
    assert checkpoint["config"].min_size[-1] == 640 and checkpoint["config"].fold_subtypes


def test_init_from_a_shipped_name_carries_classes_over_by_name(shipped_tiny):
    from maskdla.bench.predict import CLASSES
    from maskdla.finetune import init_from_checkpoint
    from maskdla.model import build_model

    name, _ = shipped_tiny
    kept_class = list(CLASSES)[0]
    model = build_model("vovnet19slim", 3, min_size=64, max_size=96)
    transfer = init_from_checkpoint(model, name, [kept_class, "a-new-zone"])
    described = transfer.describe()
    assert f"carried over by name: {kept_class}" in described and "new: a-new-zone" in described
