"""``client.py score-signal``: windows, stitching, readers and errors without a server, then end to end against
the real tritonserver serving a small exported student (scores equal the ensemble's own windows stitched by hand)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.signal_io import (
    SignalReadError,
    expand_signal_inputs,
    parse_channels,
    read_signal,
    render_signal_plot,
)
from client.signal_scoring import main, stitch, window_starts
from kdcore.contract import ANOMALOUS, DECISION, MAP, NORMAL, SIGNAL_INPUT
from kdcore.intervals import Interval, anomalous_intervals
from kdcore.series_io import SAMPLING_RATE, resample, resample_ratio


def _write_wfdb(folder: Path, name: str, signal: np.ndarray, fs: float, names=("MLII", "V1")) -> Path:
    import wfdb

    wfdb.wrsamp(name, fs=fs, units=["mV"] * signal.shape[1], sig_name=list(names), p_signal=signal,
                fmt=["16"] * signal.shape[1], adc_gain=[1000.0] * signal.shape[1], baseline=[0] * signal.shape[1],
                write_dir=str(folder))
    return folder / name


# ---------------------------------------------------------------------------------------------- windows
def test_windows_cover_every_step_and_the_last_one_ends_with_the_record() -> None:
    for steps in (256, 257, 300, 383, 384, 385, 1000, 1024):
        for stride in (1, 64, 100, 128, 255, 256):
            starts = window_starts(steps, 256, stride)
            covered = np.zeros(steps, int)
            for s in starts:
                covered[s:s + 256] += 1
            assert covered.min() >= 1, (steps, stride)
            assert starts[0] == 0 and starts[-1] == steps - 256
            assert np.all(np.diff(starts) >= 1) and np.all(np.diff(starts)[:-1] == stride)
    assert window_starts(256, 256, 128).tolist() == [0]
    assert window_starts(1000, 256, 128).tolist() == [0, 128, 256, 384, 512, 640, 744]  # 744 = 1000 - 256
    assert window_starts(768, 256, 256).tolist() == [0, 256, 512]  # no overlap, nothing added


def test_a_record_shorter_than_a_window_and_a_gapped_stride_are_refused() -> None:
    with pytest.raises(ValueError, match=r"100 steps \(0.78 s at 128 Hz\), shorter than the model's window of 256"):
        window_starts(100, 256, 128)
    with pytest.raises(ValueError, match="stride"):
        window_starts(1000, 256, 257)
    with pytest.raises(ValueError, match="stride"):
        window_starts(1000, 256, 0)


def test_overlapping_windows_are_averaged_exactly() -> None:
    # Record of 7 steps, windows of 4, stride 2: starts 0, 2 and (aligned to the end) 3.
    starts = window_starts(7, 4, 2)
    assert starts.tolist() == [0, 2, 3]
    windows = np.array([[1, 2, 3, 4], [10, 20, 30, 40], [100, 200, 300, 400]], np.float32)
    expected = [1, 2, (3 + 10) / 2, (4 + 20 + 100) / 3, (30 + 200) / 2, (40 + 300) / 2, 400]
    got = stitch(windows, starts, 7)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    with pytest.raises(RuntimeError, match="uncovered"):
        stitch(windows[:1], [0], 7)


def test_intervals_are_found_over_the_stitched_record_not_per_window() -> None:
    # 12 steps, windows of 8 at steps 0 and 4 (overlap 4..7).
    first, second = np.full(8, 0.1, np.float32), np.full(8, 0.1, np.float32)
    first[2] = 0.8                    # step 2: only the first window covers it -> stays anomalous
    first[4], second[0] = 0.9, 0.05   # step 4: one window says 0.9, the average 0.475 is below the line
    first[5:] = 0.9                   # steps 5..7, up to the first window's end ...
    second[1:6] = 0.9                 # ... and steps 5..9 in the second: one run across the boundary
    second[4] = 0.95                  # its peak at step 8
    steps = stitch(np.stack([first, second]), [0, 4], 12)
    np.testing.assert_allclose(steps[[2, 4, 5, 7, 8, 9, 10]], [0.8, 0.475, 0.9, 0.9, 0.95, 0.9, 0.1], rtol=1e-6)
    assert anomalous_intervals(steps) == [Interval(2, 2, 2, float(steps[2])), Interval(5, 9, 8, float(steps[8]))]


# ---------------------------------------------------------------------------------------------- reading
def test_the_resampling_rule_is_scipys_resample_poly() -> None:
    from scipy.signal import resample_poly

    rng = np.random.default_rng(0)
    for rate in (360, 250, 500, 100, 64, 1000, 257, 128.4):
        for length in (1, 7, 1000, 3601):
            x = rng.normal(size=(length, 2))
            ratio = resample_ratio(rate)
            want = x if ratio == 1 else resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
            got = resample(x, rate)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    from training.signals.ecg import SAMPLING_RATE as TRAINING_RATE

    assert SAMPLING_RATE == TRAINING_RATE


@pytest.fixture()
def record() -> np.ndarray:
    t = np.arange(600) / SAMPLING_RATE
    return np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.cos(2 * np.pi * 1.2 * t)], 1)


def test_npy_files_are_read_as_steps_by_leads(tmp_path: Path, record: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", record)
    signal = read_signal(tmp_path / "a.npy")
    assert signal.values.dtype == np.float32 and signal.values.shape == (600, 2) and signal.leads == ["0", "1"]
    np.testing.assert_allclose(signal.values, record, atol=1e-6)
    np.save(tmp_path / "one.npy", record[:, 0])
    assert read_signal(tmp_path / "one.npy").values.shape == (600, 1)
    assert read_signal(tmp_path / "a.npy", channels=("1",)).leads == ["1"]
    # At another rate: resampled to 128 Hz by the shared rule.
    slow = read_signal(tmp_path / "a.npy", rate=64)
    assert slow.steps == 1200 and slow.rate == 64
    np.testing.assert_allclose(slow.values, resample(record, 64).astype(np.float32))


def test_csv_files_with_and_without_a_header(tmp_path: Path, record: np.ndarray) -> None:
    np.savetxt(tmp_path / "plain.csv", record, delimiter=",")
    plain = read_signal(tmp_path / "plain.csv")
    assert plain.leads == ["0", "1"]
    np.testing.assert_allclose(plain.values, record, atol=1e-6)
    np.savetxt(tmp_path / "named.csv", record, delimiter=",", header="II,V1", comments="")
    named = read_signal(tmp_path / "named.csv")
    assert named.leads == ["II", "V1"]
    np.testing.assert_array_equal(named.values, plain.values)
    # Semicolons, a quoted header, a time column left out by name, and the leads swapped.
    timed = np.column_stack([np.arange(600) / 128, record])
    np.savetxt(tmp_path / "timed.csv", timed, delimiter=";", header='"time";"II";"V1"', comments="")
    swapped = read_signal(tmp_path / "timed.csv", channels=parse_channels("V1,II"))
    assert swapped.leads == ["V1", "II"]
    np.testing.assert_array_equal(swapped.values, plain.values[:, ::-1])
    assert read_signal(tmp_path / "timed.csv", channels=parse_channels("1,2")).leads == ["II", "V1"]


def test_wfdb_records_are_read_like_training_reads_them(tmp_path: Path) -> None:
    from training.signals.records import load_record

    t = np.arange(3600) / 360
    signal = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.cos(2 * np.pi * 1.2 * t)], 1)
    stem = _write_wfdb(tmp_path, "r100", signal, 360)
    import wfdb

    wfdb.wrann("r100", "atr", np.array([360]), np.array(["N"]), write_dir=str(tmp_path))
    trained_on, _ = load_record(stem)
    for form in (stem, stem.with_suffix(".hea"), stem.with_suffix(".dat")):
        got = read_signal(form)
        assert got.rate == 360 and got.leads == ["MLII", "V1"] and got.steps == 1280
        np.testing.assert_array_equal(got.values, trained_on)
    assert read_signal(stem, channels=("V1",)).leads == ["V1"]
    at_128 = read_signal(_write_wfdb(tmp_path, "r128", signal[:600], 128))
    np.testing.assert_allclose(at_128.values, signal[:600], atol=1e-3)  # 16-bit samples at 1000 / mV


def test_unreadable_records_get_clear_errors(tmp_path: Path, record: np.ndarray) -> None:
    bad = record.copy()
    bad[300, 1] = np.nan
    bad[400, 0] = np.inf
    np.save(tmp_path / "nan.npy", bad)
    first = r"2 NaN or infinite values, the first at sample 300 \(2.344 s\) of lead '1'"
    with pytest.raises(SignalReadError, match=first):
        read_signal(tmp_path / "nan.npy")
    (tmp_path / "holes.csv").write_text("II,V1\n0.1,0.2\n0.3,\n")
    with pytest.raises(SignalReadError, match="holes.csv: not a CSV of numbers"):
        read_signal(tmp_path / "holes.csv")
    (tmp_path / "empty.csv").write_text("# nothing\n\n")
    with pytest.raises(SignalReadError, match="no rows"):
        read_signal(tmp_path / "empty.csv")
    (tmp_path / "header_only.csv").write_text("II,V1\n")
    with pytest.raises(SignalReadError, match="empty"):
        read_signal(tmp_path / "header_only.csv")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with pytest.raises(SignalReadError, match="dtype"):
        read_signal(tmp_path / "words.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(SignalReadError, match=r"\(steps, leads\)"):
        read_signal(tmp_path / "cube.npy")
    (tmp_path / "x.edf").write_bytes(b"0")
    with pytest.raises(SignalReadError, match="unknown signal format '.edf'"):
        read_signal(tmp_path / "x.edf")
    np.save(tmp_path / "a.npy", record)
    with pytest.raises(SignalReadError, match=r"no lead 'V5' \(the file has 2: 0, 1"):
        read_signal(tmp_path / "a.npy", channels=("V5",))
    (tmp_path / "broken.hea").write_text("broken 2 360\n")
    with pytest.raises(SignalReadError, match="cannot read the WFDB record"):
        read_signal(tmp_path / "broken.hea")
    with pytest.raises(ValueError, match="empty entry"):
        parse_channels("0,,1")


def test_inputs_are_files_stems_folders_and_globs(tmp_path: Path, record: np.ndarray) -> None:
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "a.npy", record)
    np.savetxt(tmp_path / "sub" / "b.csv", record, delimiter=",")
    stem = _write_wfdb(tmp_path / "sub", "r1", record, 128)
    (tmp_path / "notes.txt").write_text("not a signal")
    assert expand_signal_inputs([tmp_path]) == [str(tmp_path / "a.npy"), str(tmp_path / "sub" / "b.csv"),
                                                str(tmp_path / "sub" / "r1.hea")]
    # A record named by its stem and again by a folder's scan is one record, in its first form.
    assert expand_signal_inputs([stem, tmp_path / "sub"]) == [str(stem), str(tmp_path / "sub" / "b.csv")]
    assert expand_signal_inputs([str(tmp_path / "*.npy")]) == [str(tmp_path / "a.npy")]
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.npy'}\n\n{stem}\n")
    assert expand_signal_inputs([f"@{tmp_path / 'list.txt'}"]) == [str(tmp_path / "a.npy"), str(stem)]
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_signal_inputs([tmp_path / "missing"])


def test_the_plot_shows_leads_score_and_shaded_intervals() -> None:
    values = np.stack([np.sin(np.arange(1000) / 10), np.cos(np.arange(1000) / 10)], 1)
    scores = np.full(1000, 0.1, np.float32)
    scores[400:500] = 0.9
    image = render_signal_plot(values, scores, anomalous_intervals(scores), title="r", leads=["II", "V1"],
                               score=0.9, label=ANOMALOUS)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[1] >= 1000
    shaded = image[40:60, 72 + 440]  # inside the interval, above the first lead's trace: pinkish
    assert np.all(shaded[:, 0] > shaded[:, 1])
    long = render_signal_plot(np.zeros((100_000, 2)), np.zeros(100_000, np.float32), [], title="long",
                              leads=["a", "b"], score=0.0, label=NORMAL)
    assert long.shape[1] <= 3200 + 72 + 16


def test_the_command_refuses_bad_options_and_a_repository_without_a_series_detector(tmp_path: Path, capsys,
                                                                                     record: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", record)
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.npy"), "--channels", "0,,1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing.npy")])
    assert e.value.code == 2
    assert main([str(tmp_path / "a.npy"), "-r", str(tmp_path / "no_repo"), "-o", str(tmp_path / "out")]) == 2
    assert "no time-series detector in" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end
STUDENT = "ecg_student"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A tiny student on a tiny ECG set, exported, served; with a few records to score written beside it."""
    import torch

    from export.repository import export_runs
    from serving.embedded import TritonServer, free_port
    from training.signals.dataset import SignalDataConfig, load_split, write_signal_dataset
    from training.signals.train import SignalTrainConfig, train_student

    root = tmp_path_factory.mktemp("score_signal")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_signal_dataset(root / "ecg", SignalDataConfig(records={"train": 2, "validation": 1, "test": 1},
                                                            windows_per_record=12, anomaly_fraction=0.5, seed=2,
                                                            plots=False))
        run = root / "student"
        train_student(SignalTrainConfig(data_root=root / "ecg", output=run, epochs=1, batch_size=8, hidden=8),
                      progress=False)
        repo = root / "model_repository"
        export_runs([(run, STUDENT)], repo, threads=1)
    finally:
        torch.set_num_threads(threads)
    # Records: 1000 steps of the test split's windows (the last window aligned to the end), the same as CSV and as
    # a 360 Hz WFDB record, one with a NaN, one shorter than a window.
    test = load_split(root / "ecg", "test").signals
    long = np.concatenate(list(test), 0)[:1000].astype(np.float64)
    records = root / "records"
    records.mkdir()
    np.save(records / "long.npy", long)
    np.savetxt(records / "long.csv", long, delimiter=",", header="II,V1", comments="")
    _write_wfdb(records, "wfdb360", resample(long, 128, 360), 360)
    nan = long.copy()
    nan[700, 0] = np.nan
    np.save(records / "nan.npy", nan)
    np.save(records / "short.npy", long[:200])
    workdir = root / "triton"
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          workdir=workdir, log_path=workdir / "server.log")
    server.start()
    try:
        server.wait_ready(timeout=120)
        yield {"server": server, "repo": repo, "records": records, "long": long}
    finally:
        assert server.stop() == 0, server.log_tail()


def _served_maps(server, windows: np.ndarray) -> np.ndarray:
    """The ensemble's calibrated per-step scores for ``windows``, called directly (batches of its maximum, 8)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    maps = []
    try:
        for i in range(0, len(windows), 8):
            batch = np.ascontiguousarray(windows[i:i + 8], dtype=np.float32)
            tensor = httpclient.InferInput(SIGNAL_INPUT, list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            maps.append(client.infer(STUDENT, [tensor], outputs=[httpclient.InferRequestedOutput(MAP)]).as_numpy(MAP))
    finally:
        client.close()
    return np.concatenate(maps)


def _by_hand(server, values: np.ndarray) -> np.ndarray:
    """The ensemble called directly on every window (stride 128, the last aligned to the end), overlaps averaged."""
    steps = len(values)
    starts = list(range(0, steps - 256 + 1, 128))
    if starts[-1] != steps - 256:
        starts.append(steps - 256)
    maps = _served_maps(server, np.stack([values[s:s + 256] for s in starts]))
    total, count = np.zeros(steps), np.zeros(steps)
    for s, m in zip(starts, maps):
        total[s:s + 256] += m
        count[s:s + 256] += 1
    return total / count


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.server
def test_score_signal_stitches_the_served_windows_and_reports_bad_records(served: dict, tmp_path: Path,
                                                                          capsys) -> None:
    server, records = served["server"], served["records"]
    out = tmp_path / "out"
    # No --model: the repository's one time-series detector. gRPC, batches of 3 (a record's windows span batches).
    status = main([str(records), "-r", str(served["repo"]), "-u", server.grpc_url, "-b", "3", "-o", str(out),
                   "--plots", "--no-progress"])
    assert status == 0, capsys.readouterr()
    rows = {Path(r["record"]).name: r for r in _rows(out / "records.csv")}
    assert set(rows) == {"long.npy", "long.csv", "wfdb360.hea", "nan.npy", "short.npy"}
    assert rows["nan.npy"]["status"] == "error"
    assert "1 NaN or infinite values, the first at sample 700 (5.469 s) of lead '0'" in rows["nan.npy"]["error"]
    assert rows["short.npy"]["status"] == "error" and "200 steps" in rows["short.npy"]["error"] \
        and "shorter than the model's window of 256 steps" in rows["short.npy"]["error"]

    expected = _by_hand(server, served["long"])
    found = anomalous_intervals(expected.astype(np.float32))
    for name in ("long.npy", "long.csv"):
        row = rows[name]
        assert row["status"] == "ok" and row["error"] == ""
        assert (int(row["steps"]), int(row["windows"])) == (1000, 7)  # starts 0, 128, ..., 640 and 744
        assert abs(float(row["score"]) - expected.max()) < 1e-5
        assert row["label"] == (ANOMALOUS if expected.max() >= DECISION else NORMAL)
        assert int(row["intervals"]) == len(found)
    assert rows["wfdb360.hea"]["status"] == "ok" and float(rows["wfdb360.hea"]["rate"]) == 360

    got = [r for r in _rows(out / "intervals.csv") if Path(r["record"]).name == "long.npy"]
    assert [(int(r["start"]), int(r["end"]), int(r["peak"])) for r in got] == [(i.start, i.end, i.peak) for i in found]
    for r, i in zip(got, found):
        assert abs(float(r["score"]) - i.score) < 1e-5
        assert float(r["start_s"]) == pytest.approx(i.start / 128) and float(r["end_s"]) == pytest.approx(i.end / 128)
    lines = [json.loads(line) for line in (out / "intervals.jsonl").read_text().splitlines()]
    assert len(lines) == len(_rows(out / "intervals.csv"))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["model"], summary["records"], summary["scored"], summary["errors"]) == (STUDENT, 5, 3, 2)
    assert summary["windows"] == 21 and summary["stride"] == 128 and len(summary["per_record"]) == 5
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["long.csv.png", "long.npy.png", "wfdb360.hea.png"]


@pytest.mark.server
def test_the_library_returns_the_stitched_scores_over_http(served: dict) -> None:
    from client.signal_scoring import SignalScoreConfig, score_signals

    server, records = served["server"], served["records"]
    results = []
    config = SignalScoreConfig(model=STUDENT, protocol="http", url=server.http_url, batch_size=8, stride=100)
    summary = score_signals([records / "long.npy", records / "short.npy"], config, results.append, keep_arrays=True)
    assert (summary.scored, summary.errors, summary.interrupted) == (1, 1, False)
    result = next(r for r in results if r.ok)
    # stride 100 over 1000 steps: starts 0, 100, ..., 700, and 744 aligned to the end.
    assert result.windows == 9
    steps = len(served["long"])
    starts = window_starts(steps, 256, 100)
    maps = _served_maps(server, np.stack([served["long"][s:s + 256] for s in starts]))
    by_hand = np.zeros(steps)
    for i in range(steps):
        covering = [m[i - s] for s, m in zip(starts, maps) if s <= i < s + 256]
        by_hand[i] = np.mean(covering)
    np.testing.assert_allclose(result.step_scores, by_hand, atol=1e-5)
    assert result.score == pytest.approx(float(by_hand.max()), abs=1e-5)
    assert result.found == anomalous_intervals(result.step_scores)
    assert all(isinstance(i, Interval) for i in result.found)


@pytest.mark.server
def test_options_that_do_not_fit_the_served_model_are_exit_status_2(served: dict, tmp_path: Path, capsys) -> None:
    common = [str(served["records"] / "long.npy"), "-m", STUDENT, "-u", served["server"].grpc_url,
              "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*common, "-b", "9"]) == 2
    assert "batch size 9 exceeds the model's max_batch_size 8" in capsys.readouterr().err
    assert main([*common, "--stride", "300"]) == 2
    assert "stride 300 is longer than the model's window of 256 steps" in capsys.readouterr().err
    assert main([common[0], "-m", "no_such_model", *common[3:]]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_an_unreachable_server_is_exit_status_2(tmp_path: Path, record: np.ndarray, capsys) -> None:
    from serving.embedded import free_port

    np.save(tmp_path / "a.npy", record)
    status = main([str(tmp_path / "a.npy"), "-m", STUDENT, "-i", "http", "-u", f"localhost:{free_port()}",
                   "-o", str(tmp_path / "out"), "--no-progress"])
    assert status == 2
    assert "cannot score on" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the shared engine
class _ScriptedTransport:
    """Stands in for :class:`client.transport.Transport`: answers each batch with ``answer(batch)`` (outputs, or an
    exception as tritonclient would raise it)."""

    shared_memory = False

    def __init__(self, answer) -> None:
        self.answer, self.batches = answer, []

    def submit(self, batch: np.ndarray, slot: int):
        import time
        from concurrent.futures import Future

        from client.transport import Pending

        self.batches.append(batch)
        future: Future = Future()
        try:
            future.set_result((self.answer(batch), time.perf_counter()))
        except Exception as e:  # noqa: BLE001  (handed over through the future, like a real reply)
            future.set_exception(e)
        return Pending(future, slot, lambda raw, slot: raw, time.perf_counter())

    def close(self) -> None:
        pass


def test_windows_go_through_the_pipelines_engine_refused_ones_alone_then_not_scored_when_down(
        tmp_path: Path, record: np.ndarray, monkeypatch, capsys) -> None:
    import grpc
    from tritonclient.utils import InferenceServerException

    import client.signal_scoring as signal_scoring

    bad = record.copy()
    bad[300, 0] = 7.0  # in the windows starting at 128 and 256 (of 0, 128, 256, 344)
    for name, values in (("a.npy", record), ("b.npy", bad), ("c.npy", record)):
        np.save(tmp_path / name, values)
    paths = [str(tmp_path / n) for n in ("a.npy", "b.npy", "c.npy")]
    monkeypatch.setattr(signal_scoring, "series_model_info", lambda config, model: signal_scoring.SeriesModel(
        model, 256, 2, 8))

    def refuse_7(batch: np.ndarray) -> dict[str, np.ndarray]:
        if np.any(batch == 7.0):
            raise InferenceServerException("bad window", status=str(grpc.StatusCode.INVALID_ARGUMENT))
        return {MAP: np.full(batch.shape[:2], 0.25, np.float32)}

    transport = _ScriptedTransport(refuse_7)
    monkeypatch.setattr(signal_scoring, "Transport", lambda *args, **kwargs: transport)
    results = {}
    config = signal_scoring.SignalScoreConfig(model="m", concurrency=1, backoff=0.01)
    summary = signal_scoring.score_signals(paths, config, lambda r: results.__setitem__(Path(r.record).name, r))
    assert [len(b) for b in transport.batches] == [8, 1, 1, 1, 1, 1, 1, 1, 1, 4]
    assert (summary.scored, summary.errors, summary.retries, summary.windows) == (2, 1, 0, 8)
    assert results["b.npy"].error == "server: bad window" and results["a.npy"].score == pytest.approx(0.25)

    def gone(batch: np.ndarray) -> dict[str, np.ndarray]:
        raise ConnectionRefusedError(111, "Connection refused")

    transport = _ScriptedTransport(gone)
    monkeypatch.setattr(signal_scoring, "Transport", lambda *args, **kwargs: transport)
    out = tmp_path / "out"
    status = main([*paths, "-m", "m", "-c", "1", "--retries", "2", "--backoff", "0.01", "-o", str(out), "--no-progress"])
    assert status == 0 and len(transport.batches) == 3  # the first batch and its two resends, nothing after
    rows = _rows(out / "records.csv")
    assert [r["status"] for r in rows] == ["error"] * 3
    assert all(r["error"].startswith("not scored: server unreachable after 2 retries (ConnectionRefusedError")
               for r in rows)
    assert (out / "not_scored.txt").read_text().split() == paths
    assert json.loads((out / "summary.json").read_text())["retries"] == 2
    assert "3 records not scored" in capsys.readouterr().out
