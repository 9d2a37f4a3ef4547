"""The recurrent student: the source's architecture and loss, and a short training run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.signals.dataset import SignalDataConfig, write_signal_dataset
from training.signals.student import TEMPERATURE, RecurrentStudent, distillation_loss
from training.signals.train import REPORT_FILE, WEIGHTS_FILE, SignalTrainConfig, train_student


def test_the_student_scores_every_step_of_every_window() -> None:
    model = RecurrentStudent()
    assert model(torch.zeros(3, 256, 2)).shape == (3, 256)
    lstm = model.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional, lstm.dropout) == (2, 128, 2, True, 0.3)
    assert model.head.in_features == 256 and model.head.out_features == 1


def test_the_loss_is_the_sources_mix_of_labels_and_softened_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 16), torch.randn(4, 16)
    labels = (torch.rand(4, 16) > 0.8).long()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    hard = bce(student, labels.float())
    soft = bce(student / TEMPERATURE, torch.sigmoid(teacher / TEMPERATURE))
    assert torch.isclose(distillation_loss(student, labels), hard)
    assert torch.isclose(distillation_loss(student, labels, teacher, lam=1.0), TEMPERATURE**2 * soft)
    assert torch.isclose(distillation_loss(student, labels, teacher, lam=0.5), 0.5 * hard + 0.5 * 4 * soft)
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(student, labels, lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        distillation_loss(student, labels, teacher, lam=1.5)


def test_a_short_training_run_keeps_the_best_validation_epoch_and_scores_the_test_split(tmp_path: Path) -> None:
    data = tmp_path / "ecg"
    write_signal_dataset(data, SignalDataConfig(records={"train": 2, "validation": 1, "test": 1},
                                                windows_per_record=12, anomaly_fraction=0.5, seed=2))
    config = SignalTrainConfig(data_root=data, output=tmp_path / "run", epochs=3, batch_size=8, hidden=16)
    report = train_student(config, progress=False)
    assert (tmp_path / "run" / WEIGHTS_FILE).is_file()
    saved = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    kept = [h for h in saved["history"] if h.get("kept")]
    assert saved["best_epoch"] == kept[-1]["epoch"]
    # The kept epoch is the best on validation's per-step AUC-PR of every epoch (the test split was not used).
    assert kept[-1]["step_auc_pr"] == max(h["step_auc_pr"] for h in saved["history"])
    for split in ("validation", "test"):
        metrics = report[split]
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("step_auroc", "step_auc_pr", "window_auroc", "msp", "msr"))
    assert np.isfinite(report["seconds"]) and report["parameters"] > 0


def test_distillation_waits_for_its_teacher(capsys) -> None:
    """lam > 0 needs the vision teacher, not built yet: refused with a message, not a crash mid-training."""
    from training.signals.train import main

    with pytest.raises(ValueError, match="teacher"):
        SignalTrainConfig(lam=0.5)
    assert main(["--lam", "0.5"]) == 2 and "teacher" in capsys.readouterr().err
