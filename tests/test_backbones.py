"""Backbone shapes, strides and weight loading (random init only; nothing is downloaded)."""
import urllib.error

import pytest
import torch

from tireid_core.models.backbones import Backbone, create_backbone, load_backbone_weights


@pytest.fixture(scope="module")
def resnet50():
    return create_backbone("resnet50").eval()


@pytest.fixture(scope="module")
def resnet50_last_stride_1():
    return create_backbone("resnet50", last_stride=1).eval()


def _shapes(backbone, height, width):
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, height, width))
    return {name: tuple(m.shape[1:]) for name, m in maps.items()}


def test_resnet50_stage_shapes_at_384x128(resnet50):
    assert isinstance(resnet50, Backbone)
    assert _shapes(resnet50, 384, 128) == {
        "layer1": (256, 96, 32),
        "layer2": (512, 48, 16),
        "layer3": (1024, 24, 8),
        "layer4": (2048, 12, 4),
    }
    assert resnet50.channels == {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert resnet50.strides["layer4"] == 32
    assert not hasattr(resnet50, "fc") and not hasattr(resnet50, "avgpool")


def test_resnet50_last_stride_1(resnet50_last_stride_1):
    backbone = resnet50_last_stride_1
    assert _shapes(backbone, 384, 128)["layer4"] == (2048, 24, 8)
    assert backbone.strides["layer4"] == 16


@pytest.mark.parametrize("last_stride, final", [(2, (12, 4)), (1, (24, 8))])
def test_resnet_small_matches_resnet50_grid_at_96x32(last_stride, final):
    backbone = create_backbone("resnet_small", last_stride=last_stride).eval()
    shapes = _shapes(backbone, 96, 32)
    assert shapes["layer2"] == (32, 48, 16)
    assert shapes["layer3"] == (64, 24, 8)
    assert shapes["layer4"] == (128, *final)
    for name, (channels, height, _) in shapes.items():
        assert backbone.channels[name] == channels
        assert 96 // backbone.strides[name] == height


def test_resnet_small_widths_and_stages_are_callable():
    backbone = create_backbone("resnet_small", widths=(8, 8, 16, 24)).eval()
    x = backbone.layer2(backbone.layer1(backbone.stem(torch.randn(2, 3, 96, 32))))
    assert backbone.layer4(backbone.layer3(x)).shape == (2, 24, 12, 4)


def test_unknown_names_and_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("vgg16")
    with pytest.raises(ValueError, match="last_stride"):
        create_backbone("resnet_small", last_stride=3)
    with pytest.raises(ValueError, match="ImageNet"):
        create_backbone("resnet_small", pretrained=True)


def test_pretrained_offline_gives_actionable_error(monkeypatch, tmp_path):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as info:
        create_backbone("resnet50", pretrained=True)
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "pretrained=False" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_load_torchvision_format_state_dict(resnet50, resnet50_last_stride_1):
    """A torchvision file (conv1/bn1 at top level, fc head) loads into the Backbone; fc is dropped."""
    state = {k.removeprefix("stem."): v.clone() for k, v in resnet50.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    state["conv1.weight"].fill_(0.5)
    target = resnet50_last_stride_1  # strides do not change the weights' shapes
    load_backbone_weights(target, state)
    assert torch.equal(target.stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(target.layer4[2].conv3.weight, resnet50.layer4[2].conv3.weight)


def test_local_state_dict_file_round_trip(tmp_path):
    source = create_backbone("resnet_small")
    path = tmp_path / "small.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = create_backbone("resnet_small", pretrained=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="do not match"):
        create_backbone("resnet_small", widths=(8, 16, 32, 64), pretrained=path)
    with pytest.raises(FileNotFoundError):
        create_backbone("resnet_small", pretrained=tmp_path / "missing.pth")
