"""Fine-tuning from a maskdla checkpoint: every tensor that fits is kept; with other classes
only the class-specific layers are rebuilt, rows of classes shared by name carried over."""
import pytest
import torch

import maskdla
from maskdla.checkpoint import save_checkpoint
from maskdla.errors import InputError
from maskdla.finetune import CLASS_LAYERS, init_from_checkpoint

OLD_CLASSES = ["text", "music", "initial"]


def tiny_model(classes, backbone="vovnet19slim", seed=0, norm=None):
    torch.manual_seed(seed)
    return maskdla.build_model(backbone, num_classes=len(classes) + 1, min_size=64, max_size=96,
                               norm=norm)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint as maskdla's training writes one, of a model with OLD_CLASSES."""
    model = tiny_model(OLD_CLASSES, seed=1)
    path = tmp_path_factory.mktemp("run") / "best.pth"
    save_checkpoint({"model": model.state_dict(), "optimizer": None, "scheduler": None,
                     "scaler": None, "epoch": 3, "iteration": 30, "rng": None,
                     "config": {"backbone": "vovnet19slim", "norm": "gn"},
                     "classes": list(OLD_CLASSES)}, path)
    return path, model.state_dict()


def test_same_classes_keep_every_tensor(trained):
    path, saved = trained
    model = tiny_model(OLD_CLASSES)
    report = init_from_checkpoint(model, path, OLD_CLASSES)
    assert report.reinitialised == [] and report.class_layers == [] and report.unused == []
    assert report.kept == list(model.state_dict())
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    assert report.backbone == "vovnet19slim"


def test_other_classes_rebuild_only_the_class_layers_keeping_shared_rows(trained):
    path, saved = trained
    new_classes = ["music", "title", "text"]  # music: old label 2 -> 1; text: 1 -> 3; title new
    model = tiny_model(new_classes)
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    report = init_from_checkpoint(model, path, new_classes)
    state = model.state_dict()
    assert report.carried_classes == ["music", "text"]
    assert report.new_classes == ["title"] and report.dropped_classes == ["initial"]
    assert report.class_layers == list(CLASS_LAYERS)
    assert sorted(report.rebuilt) == sorted(f"{layer}.{param}" for layer in CLASS_LAYERS
                                            for param in ("weight", "bias"))
    assert report.reinitialised == [] and report.unused == []
    for key, value in state.items():
        if key not in report.rebuilt:
            assert key in report.kept and torch.equal(value, saved[key]), key
    for layer, rows in CLASS_LAYERS.items():
        for param in ("weight", "bias"):
            key = f"{layer}.{param}"
            ours, theirs, init = state[key], saved[key], fresh[key]
            assert ours.shape[0] == rows * 4 and theirs.shape[0] == rows * 4
            for new, old in ((0, 0), (1, 2), (3, 1)):  # background, music, text
                assert torch.equal(ours[new * rows:(new + 1) * rows], theirs[old * rows:(old + 1) * rows]), key
            assert torch.equal(ours[2 * rows:3 * rows], init[2 * rows:3 * rows]), key  # title: fresh
            assert not torch.equal(ours[2 * rows:3 * rows], theirs[3 * rows:4 * rows]), key
    text = report.describe()
    assert "classes carried over by name: music, text; new: title; dropped: initial" in text
    assert "roi_heads.box_predictor.cls_score" in text


def test_more_classes_than_the_checkpoint(trained):
    path, saved = trained
    new_classes = OLD_CLASSES + ["title", "page-number"]
    model = tiny_model(new_classes)
    report = init_from_checkpoint(model, path, new_classes)
    weight = model.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    assert weight.shape[0] == 6
    assert torch.equal(weight[:4], saved["roi_heads.box_predictor.cls_score.weight"])
    assert report.carried_classes == OLD_CLASSES and report.new_classes == ["title", "page-number"]


def test_another_backbone_keeps_what_fits_and_says_what_does_not(trained):
    path, saved = trained
    model = tiny_model(OLD_CLASSES, backbone="vovnet19slimv1")  # no eSE gates
    report = init_from_checkpoint(model, path, OLD_CLASSES)
    assert report.unused and all(".ese.fc." in key for key in report.unused)
    assert "backbone.body.stage2.0.concat.0.weight" in report.kept
    assert "checkpoint tensors unused (8)" in report.describe()


def test_wrong_files_say_which_flag_was_meant(tmp_path, trained):
    weights = tmp_path / "vovnet19slim_backbone.pth"
    torch.save(maskdla.build_model("vovnet19slim", num_classes=2).backbone.body.state_dict(), weights)
    with pytest.raises(InputError, match="vovnet19slim_backbone.pth: this file holds plain weights "
                                         ".* not a maskdla checkpoint .* --pretrained"):
        init_from_checkpoint(tiny_model(OLD_CLASSES), weights, OLD_CLASSES)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="broken.pth: cannot load checkpoint"):
        init_from_checkpoint(tiny_model(OLD_CLASSES), broken, OLD_CLASSES)
    path, _ = trained  # trained with GroupNorm: frozen BN's weight and bias have its shapes
    with pytest.raises(InputError, match=r"best.pth: the checkpoint's norm layers \(gn\) are not this "
                                         r"model's \(BatchNorm, e.g. backbone.body.stem.0.1\): build "
                                         "the new run with --norm gn"):
        init_from_checkpoint(tiny_model(OLD_CLASSES, norm="frozenbn"), path, OLD_CLASSES)
    alien = tmp_path / "alien.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}, "config": {}, "classes": ["a"]}, alien)
    with pytest.raises(InputError, match="alien.pth: none of the checkpoint's 1 tensors fit this model"):
        init_from_checkpoint(tiny_model(OLD_CLASSES), alien, OLD_CLASSES)
