"""The optional VLM teacher on a tiny randomly initialised Idefics3 model: frozen parts, training, export, loading."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the VLM teacher needs the 'vlm' extra (transformers)")

from transformers import Idefics3ForConditionalGeneration

from kdcore.series_plot import render_plots
from training.signals.teacher import teacher_loss
from training.signals.vlm import (
    IMAGE_TOKEN,
    VLMTeacher,
    image_seq_len,
    load_vlm_teacher,
    prompt_ids_from_config,
    teacher_from_config,
    tiny_vlm_config,
    train_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 256


def windows(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` two-lead windows drawn as plots, each with a flat line over a labelled span: uint8 ``(n, 256, 256, 3)``
    and labels ``(n, 256)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS) / 128.0
    signals = np.stack([np.stack([np.sin(2 * np.pi * rng.uniform(1, 2) * t), 0.5 * np.cos(2 * np.pi * t)], 1)
                        for _ in range(n)]) + rng.normal(0, 0.05, (n, STEPS, 2))
    labels = np.zeros((n, STEPS), np.float32)
    for i in range(n):
        start = int(rng.integers(0, STEPS - 40))
        signals[i, start:start + 40] = 0.0
        labels[i, start:start + 40] = 1.0
    return torch.from_numpy(render_plots(signals)), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def teacher() -> VLMTeacher:
    torch.manual_seed(0)
    return teacher_from_config(tiny_vlm_config()).eval()


def test_the_teacher_scores_every_step_and_its_head_is_the_sources(teacher: VLMTeacher) -> None:
    plots, _ = windows(3)
    with torch.no_grad():
        logits = teacher(plots)
    assert logits.shape == (3, STEPS) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    head = teacher.head
    assert head.lstm.bidirectional and head.project.in_features == teacher.backbone.config.text_config.hidden_size
    assert head.out.out_features * head.chunks == STEPS
    assert teacher.prompt_ids.tolist().count(127) == image_seq_len(tiny_vlm_config()) == 16


def test_the_frozen_model_gets_no_gradient_and_the_head_does(teacher: VLMTeacher) -> None:
    plots, labels = windows(2)
    teacher.train()
    assert not teacher.backbone.training and teacher.head.training
    teacher.zero_grad(set_to_none=True)
    teacher_loss(teacher(plots), labels).backward()
    frozen = list(teacher.backbone.parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    head = list(teacher.head.parameters())
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    teacher.zero_grad(set_to_none=True)
    teacher.eval()


def test_the_composed_forward_is_the_librarys(teacher: VLMTeacher) -> None:
    plots, _ = windows(2)
    model = teacher.backbone
    with torch.no_grad():
        pixels = teacher.preprocess(plots)
        ids = teacher.prompt_ids.unsqueeze(0).expand(2, -1)
        library = model(input_ids=ids, pixel_values=pixels.unsqueeze(1), use_cache=False).last_hidden_state
        torch.testing.assert_close(teacher.features(pixels), library, atol=1e-5, rtol=1e-5)
    # The box filter keeps the plot's lines: a white plot maps to 1 everywhere, a drawn pixel pulls its cell down.
    assert pixels.shape == (2, 3, 64, 64) and pixels.max() <= 1.0 and pixels.min() < 0.9


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_a_few_steps_reduce_the_teacher_loss(alpha: float) -> None:
    torch.manual_seed(1)
    model = teacher_from_config(tiny_vlm_config())
    plots, labels = windows(4, seed=2)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = float(teacher_loss(model(plots), labels, alpha))
    losses = [train_step(model, optimizer, plots, labels, alpha) for _ in range(8)]
    model.eval()
    with torch.no_grad():
        after = float(teacher_loss(model(plots), labels, alpha))
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert after < 0.9 * before, (before, losses, after)


def test_the_teacher_exports_to_onnx_and_onnxruntime_agrees(teacher: VLMTeacher, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    plots, _ = windows(2)
    path = tmp_path / "vlm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic in the library's modules
        torch.onnx.export(teacher, (plots,), str(path), dynamo=False, opset_version=17, input_names=["plots"],
                          output_names=["logits"], dynamic_axes={"plots": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (2, 3):  # the traced batch size and another one: the batch axis is really dynamic
        batch, _ = windows(n, seed=n)
        with torch.no_grad():
            expected = teacher(batch).numpy()
        got = session.run(None, {"plots": batch.numpy()})[0]
        assert got.shape == (n, STEPS)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_loading_names_the_folder_and_what_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"no SmolVLM folder at {missing}"):
        load_vlm_teacher(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_vlm_teacher(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    with pytest.raises(FileNotFoundError, match=r"empty has no model weights \(none of model.safetensors"):
        load_vlm_teacher(empty)
    (empty / "model.safetensors").write_bytes(b"")
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' model, not an Idefics3 one"):
        load_vlm_teacher(empty)


def test_a_saved_model_loads_and_gives_the_same_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    config = tiny_vlm_config()
    saved = Idefics3ForConditionalGeneration(config).eval()  # what SmolVLM's checkpoints hold
    saved.save_pretrained(tmp_path)
    # An image processor's scaling that differs from the defaults, to see it read.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.5, 0.6],
                                                                   "image_std": [0.2, 0.3, 0.4]}))
    loaded = load_vlm_teacher(tmp_path).eval()
    reference = VLMTeacher(saved, prompt_ids_from_config(config)).eval()  # takes the generation model's .model
    reference.mean.copy_(torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
    reference.std.copy_(torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1))
    loaded.head.load_state_dict(reference.head.state_dict())
    plots, _ = windows(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(plots), reference(plots), atol=1e-6, rtol=1e-6)
    assert all(not p.requires_grad for p in loaded.backbone.parameters())


def test_weights_that_do_not_cover_the_model_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    Idefics3ForConditionalGeneration(tiny_vlm_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = next(key for key in weights if "vision_model" in key)
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not cover the model: 1 missing"):
        load_vlm_teacher(tmp_path)


def test_plots_must_be_uint8_rgb(teacher: VLMTeacher) -> None:
    with pytest.raises(ValueError, match="uint8"):
        teacher(torch.zeros(1, 256, 256, 3))
    with pytest.raises(ValueError, match=r"\(1, 256, 256\)"):
        teacher(torch.zeros(1, 256, 256, dtype=torch.uint8))
    with torch.no_grad():  # another plot size: resized bilinearly to the tower's side
        assert teacher(torch.full((1, 100, 120, 3), 255, dtype=torch.uint8)).shape == (1, STEPS)


def test_a_folder_with_a_tokenizer_gets_the_chat_prompt(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    config = tiny_vlm_config()
    special = ["<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", IMAGE_TOKEN]
    words = ["User", ":", "Assistant", "Which", "time", "steps", "of", "this", "two", "-", "lead", "ECG", "plot",
             "are", "anomalous", "?"]
    vocab = {token: i for i, token in enumerate(special + words)}
    vocab[IMAGE_TOKEN] = config.image_token_id  # the tokenizer and the config agree on the image token
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        additional_special_tokens=special[1:])
    tokenizer.save_pretrained(tmp_path)
    Idefics3ForConditionalGeneration(config).save_pretrained(tmp_path)
    loaded = load_vlm_teacher(tmp_path)
    ids = loaded.prompt_ids.tolist()
    assert ids[0] == vocab["<|im_start|>"] and vocab["<unk>"] not in ids
    start = ids.index(config.image_token_id)
    assert ids[start - 2:start] == [vocab["<fake_token_around_image>"], vocab["<global-img>"]]
    assert ids[start:start + 16] == [config.image_token_id] * 16
    assert ids[start + 16] == vocab["<fake_token_around_image>"]
    assert ids[-1] == vocab[":"] and vocab["anomalous"] in ids
    with torch.no_grad():
        assert loaded(windows(1)[0]).shape == (1, STEPS)


def test_the_teacher_trainer_takes_a_vlm_folder_and_the_run_exports(tmp_path: Path) -> None:
    """``kd-train-signal-teacher --vlm FOLDER``: the head trains on the frozen model's pooled state, the run keeps
    the head only and names the folder, and the exporter serves it like the other teacher (renderer, parity)."""
    from export.repository import export_runs
    from kdcore.contract import ModelNames
    from kdcore.stats import load_stats
    from training.signals.dataset import SignalDataConfig, write_signal_dataset
    from training.signals.train import TeacherTrainConfig, train_teacher

    folder = tmp_path / "smolvlm"
    Idefics3ForConditionalGeneration(tiny_vlm_config()).save_pretrained(folder)
    data = tmp_path / "ecg"
    write_signal_dataset(data, SignalDataConfig(records={"train": 1, "validation": 1, "test": 1}, windows_per_record=8,
                                                anomaly_fraction=0.5, seed=1, plots=False))
    run = tmp_path / "run"
    report = train_teacher(TeacherTrainConfig(data_root=data, output=run, vlm=folder, epochs=1, batch_size=4),
                           progress=False)
    assert np.isfinite(report["history"][0]["loss"])
    stats = load_stats(run / "stats.json")
    assert stats.model.method == "vlm_teacher" and stats.model.plot_size == 256
    assert stats.model.trainable_parameters < stats.model.parameters  # the frozen model is counted, not trained
    result = export_runs([(run, "ecg_vlm")], tmp_path / "repo")[0]
    assert all(max(r.max_abs.values()) < 1e-3 for r in result.parity)
    assert (tmp_path / "repo" / ModelNames("ecg_vlm").renderer / "config.pbtxt").is_file()
