"""kd-compare-signal's parts: FLOPs that count the LSTMs, the speed-up from alternating rounds, the table."""

from __future__ import annotations

import torch

from bench.compare import gflops, lstm_flops
from bench.series_compare import Row, markdown_table, speedup
from training.signals.student import RecurrentStudent


def test_lstm_flops_count_every_gate_product_of_every_layer_and_direction() -> None:
    # Layer 1: 4 gates x H x (I + H) MACs per step and direction; layer 2 reads both directions (2 H).
    lstm = torch.nn.LSTM(2, 8, num_layers=2, bidirectional=True, batch_first=True)
    per_step = 2 * (4 * 8 * (2 + 8)) + 2 * (4 * 8 * (16 + 8))
    assert lstm_flops(lstm, 10) == 2 * per_step * 10
    single = torch.nn.LSTM(3, 4)
    assert lstm_flops(single, 5) == 2 * 4 * 4 * (3 + 4) * 5


def test_the_students_gflops_include_its_recurrence() -> None:
    student = RecurrentStudent().eval()
    counted = gflops(student, torch.zeros(1, 256, 2)) * 1e9
    assert counted == lstm_flops(student.lstm, 256) + 2 * 256 * 256  # the per-step Linear(256, 1)


def test_speedup_is_the_median_of_per_round_ratios_and_the_table_has_every_row() -> None:
    rounds = [{"s": 30.0, "t": 10.0}, {"s": 10.0, "t": 10.0}, {"s": 40.0, "t": 20.0}]
    assert speedup(rounds, "s", "t") == 2.0  # ratios 3, 1, 2: drift between rounds cancels within each
    row = Row(model="m", method="x", setting="lam 0", parameters=1_000_000, trainable_parameters=500_000, gflops=0.27,
              step_auroc=0.9, step_auc_pr=None, vus_pr=0.8, window_auroc=1.0, msp=0.4, msr=0.9,
              validation_step_auc_pr=0.8, served_batched=100.0, served_single=20.0, p50_ms=5.0, p99_ms=9.0)
    table = markdown_table([row])
    assert table.count("\n") == 3 and "| m | lam 0 | 1.00 M (0.50 M) | 0.270 | 0.900 | - | 0.800 |" in table
