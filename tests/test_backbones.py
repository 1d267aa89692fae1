"""Backbones and build_model: registry, strides and widths, norms, pretrained loading."""
import urllib.error
from dataclasses import replace

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

import maskdla
from maskdla.backbones import BACKBONES, V1_ROWS, build_backbone, build_body, load_pretrained
from maskdla.backbones.resnet import RESNET_CONFIGS
from maskdla.backbones.vovnet import VOVNET_CONFIGS
from maskdla.errors import InputError

STUDY_NAMES = ["resnet31", "resnet50", "resnet50a", "resnet50b", "resnet50c", "resnet101",
               "vovnet19lite", "vovnet19", "vovnet39", "vovnet57", "vovnet99"]
STUDY_WIDTHS = {"resnet": [256, 512, 1024, 2048], "vovnet": [256, 512, 768, 1024]}


def conv_layers(name):
    """Convs on the main path: stem convs + the convs of every block (3 per bottleneck;
    n + 1 per OSA module); projection shortcuts and eSE gates excluded."""
    body = build_body(name)
    return sum(1 for module_name, module in body.named_modules()
               if isinstance(module, nn.Conv2d) and "downsample" not in module_name
               and not module_name.endswith("ese.fc"))


def test_registry_holds_the_study_backbones():
    for name in STUDY_NAMES:
        assert name in BACKBONES
    assert BACKBONES["resnet50"] is BACKBONES["resnet50a"]
    # one table per family: every registered name is a row (or an alias of one)
    assert set(BACKBONES) == set(RESNET_CONFIGS) | set(VOVNET_CONFIGS) | {"resnet50"}


# The study's "conv layers" column counts the ImageNet classifier of resnet50/101 (49 + 1,
# 51 + 1, 52 + 1, 100 + 1) but not of resnet31 (31 convs): the bodies match that table.
@pytest.mark.parametrize("name,convs", [
    ("resnet31", 31), ("resnet50a", 49), ("resnet50b", 51), ("resnet50c", 52), ("resnet101", 100),
    ("vovnet19", 19), ("vovnet39", 39), ("vovnet57", 57), ("vovnet99", 99)])
def test_conv_layer_counts_match_the_study(name, convs):
    assert conv_layers(name) == convs


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_strides_4_to_32_with_the_study_widths(name):
    spec = BACKBONES[name]
    backbone = build_backbone(name)
    assert isinstance(backbone, BackboneWithFPN)
    height, width = 64, 96
    with torch.no_grad():
        stages = backbone.body(torch.rand(1, 3, height, width))
        pyramid = backbone(torch.rand(1, 3, height, width))
    expected_widths = (list(spec.config.stage_out_channels) if spec.family == "vovnet"
                       else STUDY_WIDTHS["resnet"])
    if not name.startswith("vovnet19slim"):
        assert expected_widths == STUDY_WIDTHS[spec.family]
    assert [stages[key].shape[1] for key in "0123"] == expected_widths
    for key, stride in zip("0123", (4, 8, 16, 32)):
        assert tuple(stages[key].shape[-2:]) == (height // stride, width // stride)
    assert list(pyramid) == ["0", "1", "2", "3", "pool"]
    fpn_width = 128 if name.startswith(("vovnet19lite", "vovnet19slim")) else 256
    assert backbone.out_channels == fpn_width
    assert all(level.shape[1] == fpn_width for level in pyramid.values())
    assert pyramid["pool"].shape[-1] == (width // 64 + (width % 64 > 0))


def test_norms_and_their_defaults():
    def norm_types(backbone):
        return {type(module) for module in backbone.body.modules()
                if isinstance(module, (nn.GroupNorm, nn.BatchNorm2d, FrozenBatchNorm2d, nn.SyncBatchNorm))}

    assert norm_types(build_backbone("resnet31")) == {nn.GroupNorm}  # from scratch: GN
    assert norm_types(build_backbone("resnet31", norm="bn")) == {nn.BatchNorm2d}
    assert norm_types(build_backbone("resnet31", norm="syncbn")) == {nn.SyncBatchNorm}
    assert norm_types(build_backbone("vovnet19", norm="frozenbn")) == {FrozenBatchNorm2d}
    with pytest.raises(ValueError, match="unknown norm 'layernorm'.*frozenbn, bn, syncbn, gn"):
        build_backbone("resnet31", norm="layernorm")


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'.*resnet31.*vovnet99"):
        maskdla.build_model("resnet18", num_classes=4)


def _osa_modules(name):
    return [m for m in build_body(name).modules() if type(m).__name__ == "OSAModule"]


def test_vovnet_v1_rows_have_no_ese_and_no_identity():
    osa_v2, osa_v1 = _osa_modules("vovnet39"), _osa_modules("vovnet39v1")
    assert [m.identity for m in osa_v2] == [False, False, False, True, False, True]
    assert not any(m.identity for m in osa_v1)
    assert all(type(m.ese).__name__ == "EffectiveSqueezeExcitation" for m in osa_v2)
    assert all(isinstance(m.ese, nn.Identity) for m in osa_v1)
    # every study row has its V1 row, and that row differs from it only there
    for name, v1_name in V1_ROWS.items():
        assert VOVNET_CONFIGS[v1_name] == replace(VOVNET_CONFIGS[name], identity=False, ese="none",
                                                  published_weights=None)


def test_timm_rows_put_ese_on_the_last_module_of_each_stage_only():
    osa = _osa_modules("ese_vovnet57b")  # modules per stage 1, 1, 4, 3
    has_ese = [type(m.ese).__name__ == "EffectiveSqueezeExcitation" for m in osa]
    assert has_ese == [True, True, False, False, False, True, False, False, True]
    assert [m.identity for m in osa] == [False, False, False, True, True, True, False, True, True]
    depthwise = _osa_modules("ese_vovnet19b_dw")
    assert all(m.layers[0][0].groups == m.layers[0][0].in_channels for m in depthwise)
    assert [m.reduction is not None for m in depthwise] == [True, True, True, True]


def test_one_conv_norm_act_helper_builds_both_families():
    import inspect

    import maskdla.backbones.resnet as resnet
    import maskdla.backbones.vovnet as vovnet
    from maskdla.backbones import layers
    for family in (resnet, vovnet):
        assert family.conv_norm_act is layers.conv_norm_act
        assert not [name for name, function in inspect.getmembers(family, inspect.isfunction)
                    if "conv_norm" in name and function is not layers.conv_norm_act]
    # unpacked into the deep stem, it keeps the flat numbering of saved resnet50b/c models
    deep = build_body("resnet50b").stem.deep
    assert [type(m).__name__ for m in deep] == ["Conv2d", "GroupNorm", "ReLU"] * 3


def test_freeze_at_freezes_leading_stages():
    backbone = build_backbone("resnet31", norm="bn", freeze_at=2)
    body = backbone.body
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    # frozen stages keep their statistics: their BN became frozen BN
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.layer1.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in body.layer2.modules())
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone("resnet31", freeze_at=6)


@pytest.mark.parametrize("name", ["resnet50a", "resnet101"])
def test_torchvision_imagenet_state_dict_loads_with_no_missing_key(tmp_path, name):
    reference = getattr(torchvision.models, name.rstrip("a"))(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(name, pretrained=str(path))
    assert isinstance(backbone.body.layer1[0].bn1, FrozenBatchNorm2d)  # pretrained -> frozen BN
    report = load_pretrained(build_body(name, norm="frozenbn"), name, str(path))
    assert report["missing"] == []
    assert report["unexpected"] == []  # fc.* ignored, num_batches_tracked dropped by frozen BN
    own = backbone.body.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        ours = own["stem." + key] if key.startswith(("conv1.", "bn1.")) else own[key]
        assert torch.equal(ours, value), key


def test_pretrained_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="not found"):
        build_backbone("resnet50", pretrained=str(tmp_path / "missing.pth"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="broken.pth: cannot read pretrained weights"):
        build_backbone("resnet50", pretrained=str(broken))
    deeper = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), deeper)
    with pytest.raises(InputError, match="resnet50.pth: these are weights for backbone resnet50a, "
                                         "not resnet31: first mismatched tensor layer1.2.conv1.weight"):
        load_pretrained(build_body("resnet31"), "resnet31", str(deeper))
    partial = tmp_path / "partial.pth"  # a file of no registered backbone: loads, and says what is missing
    torch.save({key: value for key, value in build_body("resnet31").state_dict().items()
                if not key.startswith("layer4.")}, partial)
    report = load_pretrained(build_body("resnet31"), "resnet31", str(partial))
    assert report["unexpected"] == [] and "layer4.0.conv1.weight" in report["missing"]
    other_family = tmp_path / "vovnet.pth"
    torch.save(build_body("vovnet19slim").state_dict(), other_family)
    with pytest.raises(InputError, match="vovnet.pth: these are weights for backbone vovnet19slim, "
                                         "not resnet31"):
        build_backbone("resnet31", pretrained=str(other_family))
    stranger = tmp_path / "stranger.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, stranger)
    with pytest.raises(InputError, match="stranger.pth: none of the 1 tensors .* resnet31 body"):
        build_backbone("resnet31", pretrained=str(stranger))
    wide = tmp_path / "wide.pth"
    torch.save({"stem.conv1.weight": torch.zeros(32, 3, 7, 7)}, wide)
    with pytest.raises(InputError, match="shape mismatch .* stem.conv1.weight"):
        build_backbone("resnet31", pretrained=str(wide))
    with pytest.raises(InputError, match="ImageNet weights for backbone vovnet39 are published at "
                                         r"https://\S+/vovnet39_ese_detectron2.pth: fetch that file "
                                         "and pass --pretrained PATH"):
        build_backbone("vovnet39", pretrained="imagenet")
    with pytest.raises(InputError, match="no ImageNet weights are published for backbone vovnet39v1"):
        build_backbone("vovnet39v1", pretrained="imagenet")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(InputError, match="Offline.*--pretrained PATH"):
        build_backbone("resnet50", pretrained="imagenet")


def _targets(height, width):
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 10:40, 8:100] = 1
    masks[1, 60:100, 20:60] = 1
    return [{"boxes": torch.tensor([[8.0, 10.0, 100.0, 40.0], [20.0, 60.0, 60.0, 100.0]]),
             "labels": torch.tensor([1, 2]), "masks": masks}]


@pytest.mark.parametrize("name", ["resnet31", "vovnet19lite"])
def test_one_train_step_and_one_eval_forward_at_128px(name):
    torch.manual_seed(0)
    model = maskdla.build_model(name, num_classes=4, min_size=128, max_size=192)
    assert isinstance(model, MaskRCNN)
    model.train()
    images = [torch.rand(3, 128, 160)]
    losses = model(images, _targets(128, 160))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        (output,) = model(images)
    assert set(output) == {"boxes", "labels", "scores", "masks"}
    assert output["masks"].shape[1:] == (1, 128, 160)


def test_lite_fpn_width_flows_into_the_heads():
    model = maskdla.build_model("vovnet19lite", num_classes=4)
    assert model.rpn.head.conv[0][0].in_channels == 128
    assert model.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    assert model.roi_heads.mask_head[0][0].in_channels == 128
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert model.roi_heads.box_predictor.cls_score.out_features == 4


def test_page_transform_does_not_resize_a_page_already_at_training_size():
    model = maskdla.build_model("resnet31", num_classes=3, min_size=(96, 128), max_size=256)
    model.eval()
    image = torch.rand(3, 96, 140)  # short side 96: one of the training sizes
    batch, _ = model.transform([image])
    assert batch.image_sizes == [(96, 140)]
    batch, _ = model.transform([torch.rand(3, 300, 200)])  # anything else is resized
    assert batch.image_sizes == [(192, 128)]
