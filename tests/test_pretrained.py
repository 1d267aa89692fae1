"""Published VoVNet weights: the VoVNet detectron2 project's ImageNet checkpoints and timm's
VoVNets load into their rows, tensor by tensor; weights for another backbone, or a whole
maskdla checkpoint, are refused with a message that names what was meant."""
import re

import pytest
import torch
from torch.nn import functional as F
from torchvision.models._utils import IntermediateLayerGetter

import maskdla
from maskdla.backbones import build_backbone, build_body, identify_backbone, load_pretrained
from maskdla.backbones.vovnet import IMAGENET_MEAN, IMAGENET_STD, VOVNET_CONFIGS
from maskdla.errors import InputError


# ------------------------------------------------ the VoVNet detectron2 project's layout

def _d2_conv_norm(tensors, prefix, in_channels, out_channels, kernel_size, depthwise=False):
    """One conv3x3/conv1x1 (names ``PREFIX/conv``, ``PREFIX/norm``) or dw_conv3x3 block
    (``PREFIX/dw_conv3x3``, ``PREFIX/pw_conv1x1``, ``PREFIX/pw_norm``) of the public code,
    with frozen-BN tensors; random values."""
    if depthwise:  # its depthwise conv has groups=out_channels and is used with in == out
        tensors[f"{prefix}/dw_conv3x3.weight"] = torch.randn(out_channels, 1, 3, 3)
        tensors[f"{prefix}/pw_conv1x1.weight"] = torch.randn(out_channels, in_channels, 1, 1)
        norm = f"{prefix}/pw_norm"
    else:
        tensors[f"{prefix}/conv.weight"] = torch.randn(out_channels, in_channels, kernel_size, kernel_size)
        norm = f"{prefix}/norm"
    tensors[f"{norm}.weight"] = torch.rand(out_channels) + 0.5
    tensors[f"{norm}.bias"] = torch.randn(out_channels)
    tensors[f"{norm}.running_mean"] = torch.randn(out_channels)
    tensors[f"{norm}.running_var"] = torch.rand(out_channels) + 0.5


def detectron2_vovnet(stem, conv, out, layers, blocks, depthwise=False):
    """A state dict named and shaped as the body of the VoVNet detectron2 project
    (youngwanLEE/vovnet-detectron2, vovnet/vovnet.py), in its module order: stem
    ``stem_1..3``; per stage N and module M ``OSAN_M`` with ``layers.K.OSAN_M_K``, in
    depthwise models ``conv_reduction.OSAN_M_reduction_0`` when the input is wider than the
    convs, ``concat.OSAN_M_concat`` and an eSE ``ese.fc`` in every module."""
    tensors = {}
    _d2_conv_norm(tensors, "stem.stem_1", 3, stem[0], 3)
    _d2_conv_norm(tensors, "stem.stem_2", stem[0], stem[1], 3, depthwise)
    _d2_conv_norm(tensors, "stem.stem_3", stem[1], stem[2], 3, depthwise)
    inputs = [stem[2], *out[:-1]]
    for index in range(4):
        stage = index + 2
        for module in range(1, blocks[index] + 1):
            name = f"OSA{stage}_{module}"
            prefix = f"stage{stage}.{name}"
            module_in = inputs[index] if module == 1 else out[index]
            width = conv[index] if depthwise else module_in
            for layer in range(layers):
                _d2_conv_norm(tensors, f"{prefix}.layers.{layer}.{name}_{layer}",
                              width if layer == 0 else conv[index], conv[index], 3, depthwise)
            if depthwise and module_in != conv[index]:
                _d2_conv_norm(tensors, f"{prefix}.conv_reduction.{name}_reduction_0",
                              module_in, conv[index], 1)
            _d2_conv_norm(tensors, f"{prefix}.concat.{name}_concat",
                          module_in + layers * conv[index], out[index], 1)
            tensors[f"{prefix}.ese.fc.weight"] = torch.randn(out[index], out[index], 1, 1)
            tensors[f"{prefix}.ese.fc.bias"] = torch.randn(out[index])
    return tensors


STANDARD = dict(conv=(128, 160, 192, 224), out=(256, 512, 768, 1024))
#: row -> the public code's spec for the checkpoint that fits it
DETECTRON2_SPECS = {
    "vovnet19slim": dict(stem=(64, 64, 128), conv=(64, 80, 96, 112), out=(112, 256, 384, 512),
                         layers=3, blocks=(1, 1, 1, 1)),                       # V-19-slim-eSE
    "vovnet19": dict(stem=(64, 64, 128), **STANDARD, layers=3, blocks=(1, 1, 1, 1)),  # V-19-eSE
    "vovnet39": dict(stem=(64, 64, 128), **STANDARD, layers=5, blocks=(1, 1, 2, 2)),  # V-39-eSE
    "vovnet57": dict(stem=(64, 64, 128), **STANDARD, layers=5, blocks=(1, 1, 4, 3)),  # V-57-eSE
    "vovnet99": dict(stem=(64, 64, 128), **STANDARD, layers=5, blocks=(1, 3, 9, 3)),  # V-99-eSE
    "ese_vovnet19b_dw": dict(stem=(64, 64, 64), **STANDARD, layers=3, blocks=(1, 1, 1, 1),
                             depthwise=True),                                  # V-19-dw-eSE
}

_D2_NAMES = {False: ("conv", "norm"), True: ("dw_conv3x3", "pw_conv1x1", "pw_norm")}


def detectron2_key(ours, depthwise):
    """The public layout's name for our tensor ``ours`` (the test's own translation)."""
    parts = ours.split(".")
    if parts[0] == "stem":
        index, child, param = int(parts[1]), int(parts[2]), parts[3]
        names = _D2_NAMES[depthwise and index > 0]
        return f"stem.stem_{index + 1}/{names[child]}.{param}"
    stage = int(parts[0][len("stage"):])
    module = int(parts[1]) + (1 if stage == 2 else 0)  # our stages 3-5 hold the pool at 0
    name = f"OSA{stage}_{module}"
    prefix = f"{parts[0]}.{name}"
    if parts[2] == "ese":
        return f"{prefix}.ese.fc.{parts[4]}"
    if parts[2] == "layers":
        child, param = int(parts[4]), parts[5]
        return f"{prefix}.layers.{parts[3]}.{name}_{parts[3]}/{_D2_NAMES[depthwise][child]}.{param}"
    child, param = int(parts[3]), parts[4]
    where = {"concat": f"concat.{name}_concat", "reduction": f"conv_reduction.{name}_reduction_0"}
    return f"{prefix}.{where[parts[2]]}/{_D2_NAMES[False][child]}.{param}"


def _save_detectron2(name, path, wrapping):
    spec = DETECTRON2_SPECS[name]
    tensors = detectron2_vovnet(**spec)
    if wrapping == "model":  # a backbone checkpoint as detectron2 saves one
        saved = {"model": tensors, "__author__": "test"}
    elif wrapping == "detector":  # a whole detector: only backbone.bottom_up is the body
        saved = {"model": {**{f"backbone.bottom_up.{key}": value for key, value in tensors.items()},
                           "backbone.fpn_lateral2.weight": torch.zeros(256, 256, 1, 1),
                           "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)}}
    else:
        saved = tensors
    torch.save(saved, path)
    return tensors, spec.get("depthwise", False)


@pytest.mark.parametrize("name,wrapping", [
    ("vovnet19slim", "bare"), ("vovnet19", "model"), ("vovnet39", "detector"),
    ("ese_vovnet19b_dw", "model"),
    pytest.param("vovnet57", "model", marks=pytest.mark.slow),
    pytest.param("vovnet99", "bare", marks=pytest.mark.slow)])
def test_detectron2_imagenet_checkpoint_loads_tensor_by_tensor(tmp_path, name, wrapping):
    torch.manual_seed(0)
    path = tmp_path / f"{name}_ese_detectron2.pth"
    tensors, depthwise = _save_detectron2(name, path, wrapping)
    body = build_body(name, norm="frozenbn")
    report = load_pretrained(body, name, str(path))
    assert report == {"missing": [], "unexpected": []}
    own = body.state_dict()
    assert len(own) == len(tensors)
    for key, value in own.items():
        source = tensors[detectron2_key(key, depthwise)]
        if key == "stem.0.0.weight":  # converted from detectron2's BGR 0-255 input
            source = source.flip(1) * (255 * torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
        assert torch.equal(value, source), key


def test_converted_stem_conv_gives_what_detectron2_computed():
    """The same page through detectron2's input (BGR, 0-255, mean subtracted) and the
    checkpoint's stem conv, and through maskdla's input (RGB, 0-1, ImageNet mean and std)
    and the converted conv, gives the same features."""
    torch.manual_seed(0)
    weight = torch.randn(64, 3, 3, 3)
    path_weights = {"stem.stem_1/conv.weight": weight}
    converted = build_body("vovnet19").remap_state_dict(path_weights)["stem.0.0.weight"]
    rgb = torch.rand(1, 3, 20, 24)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    detectron2_input = (rgb * 255 - mean * 255).flip(1)
    maskdla_input = (rgb - mean) / std
    expected = F.conv2d(detectron2_input, weight, stride=2, padding=1)
    assert torch.allclose(F.conv2d(maskdla_input, converted, stride=2, padding=1), expected,
                          rtol=1e-4, atol=1e-3)
    model = maskdla.build_model("vovnet19", num_classes=2)
    assert model.transform.image_mean == list(IMAGENET_MEAN)
    assert model.transform.image_std == list(IMAGENET_STD)


def test_ese_in_every_module_as_the_public_code_builds_it():
    osa = [m for m in build_body("vovnet99").modules() if type(m).__name__ == "OSAModule"]
    assert len(osa) == 16 and all(type(m.ese).__name__ == "EffectiveSqueezeExcitation" for m in osa)
    assert VOVNET_CONFIGS["vovnet99"].published_weights.endswith("/vovnet99_ese_detectron2.pth")


def test_weights_of_another_backbone_name_both_and_the_first_mismatch(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vovnet39_ese_detectron2.pth"
    _save_detectron2("vovnet39", path, "model")
    assert identify_backbone(torch.load(path)["model"]) == ["vovnet39"]
    with pytest.raises(InputError, match=re.escape(
            f"{path}: these are weights for backbone vovnet39, not vovnet57: first mismatched "
            "tensor stage4.3.layers.0.0.weight (192, 768, 3, 3) of vovnet57 is not in the file")):
        build_backbone("vovnet57", pretrained=str(path))
    with pytest.raises(InputError, match="weights for backbone vovnet39, not vovnet39v1: first "
                                         "mismatched tensor stage2.0.ese.fc.weight .* has no place"):
        build_backbone("vovnet39v1", pretrained=str(path))
    small = tmp_path / "vovnet19_ese_detectron2.pth"
    _save_detectron2("vovnet19", small, "bare")
    with pytest.raises(InputError, match="weights for backbone vovnet19lite = vovnet19, not resnet50: "):
        build_backbone("resnet50", pretrained=str(small))
    build_backbone("vovnet19lite", pretrained=str(small))  # the same body: fits


def test_a_maskdla_checkpoint_given_to_pretrained_names_init_from(tmp_path):
    model = maskdla.build_model("vovnet19slim", num_classes=3)
    path = tmp_path / "best.pth"
    torch.save({"model": model.state_dict(), "config": {"backbone": "vovnet19slim"},
                "classes": ["a", "b"]}, path)
    with pytest.raises(InputError, match="best.pth: this is a maskdla checkpoint .* --init-from"):
        build_backbone("vovnet19slim", pretrained=str(path))


# ------------------------------------------------------------------------------- timm

def _timm_model(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    for module in model.modules():  # statistics of a trained model, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return timm, model


@pytest.mark.parametrize("timm_name,row", [
    ("ese_vovnet19b_dw", "ese_vovnet19b_dw"), ("ese_vovnet39b", "ese_vovnet39b"),
    pytest.param("ese_vovnet57b", "ese_vovnet57b", marks=pytest.mark.slow),
    # timm's other names for networks the study's rows already are
    ("vovnet39a", "vovnet39v1"), ("ese_vovnet19b_slim", "vovnet19slim")])
def test_timm_state_dict_loads_and_gives_timms_stage_outputs(tmp_path, timm_name, row):
    timm, reference = _timm_model(timm_name)
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    body = build_body(row, norm="frozenbn")
    assert load_pretrained(body, row, str(path)) == {"missing": [], "unexpected": []}
    features = timm.create_model(timm_name, pretrained=True, features_only=True, out_indices=(1, 2, 3, 4),
                                 pretrained_cfg_overlay={"file": str(path)})  # the same file, no download
    body.eval(), features.eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = features(image)
        ours = list(IntermediateLayerGetter(body, {name: name for name in body.stage_names})(image).values())
    assert [tuple(map(int, f.shape)) for f in expected] == [tuple(map(int, f.shape)) for f in ours]
    for stage, (theirs, mine) in enumerate(zip(expected, ours), start=2):
        scale = float(theirs.abs().max())
        assert scale > 0
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5 * scale, msg=f"stage {stage}")


def test_timm_weights_given_to_the_study_row_name_timms_row(tmp_path):
    _, reference = _timm_model("ese_vovnet39b")
    path = tmp_path / "ese_vovnet39b.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(InputError, match="weights for backbone ese_vovnet39b, not vovnet39: first "
                                         r"mismatched tensor stage4\.1\.ese\.fc\.weight .* not in the file"):
        build_backbone("vovnet39", pretrained=str(path))


def test_timm_safetensors_file_loads(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    _, reference = _timm_model("ese_vovnet19b_dw")
    path = tmp_path / "model.safetensors"
    safetensors.save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(path))
    body = build_body("ese_vovnet19b_dw", norm="frozenbn")
    assert load_pretrained(body, "ese_vovnet19b_dw", str(path)) == {"missing": [], "unexpected": []}
    assert torch.equal(body.stem[1][0].weight, reference.stem[1].conv_dw.weight)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="broken.safetensors: cannot read pretrained weights"):
        build_backbone("ese_vovnet19b_dw", pretrained=str(broken))
