"""The benchmarks run end to end (figures are not asserted: speed targets live in the benchmarks' output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import client_paths, serving
from bench.readme import markers
from safetensors.torch import load_file
from export.repository import ExportResult

pytestmark = pytest.mark.server


def test_kd_bench_writes_json_plot_and_readme_table(
    exported_all: list[ExportResult], tmp_path: Path, capsys
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{serving.README_BEGIN}\nold\n{serving.README_END}\nrest\n")
    repository = exported_all[0].repository
    rc = serving.main(["--repository", str(repository), "--models", "ad_inference", "kdae_digits",
                       "--seconds", "0.3", "--rounds", "2", "--output", str(tmp_path / "b.json"),
                       "--plot", str(tmp_path / "b.png"), "--readme", str(readme)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["model"] for r in data["results"]] == ["ad_inference", "kdae_digits"]
    for r in data["results"]:
        # Single-image requests at each concurrency, and the client's batch of 8 at 4 in flight ("b8"), for pixels
        # also through shared memory ("b8_shm").
        # The image detector's score-only ensemble runs in the same rounds, as the calibrated network's comparison.
        image = {"b8_shm", "c4_ensemble", "batched_ensemble"} if r["model"] == "ad_inference" else set()
        assert set(r["served"]) == {"grpc", "http"} and set(r["served"]["grpc"]) == {"1", "2", "4", "8", "b8", *image}
        assert all(t["failures"] == 0 and t["images_per_second"] > 0 for p in r["served"].values() for t in p.values())
        assert r["ort"]["1"]["p99_ms"] > 0
        # Ratios are taken round by round (in-process and served runs interleaved), then the median.
        assert len(r["rounds"]["ort"]["4"]) == 2 and len(r["rounds"]["served"]["http"]["1"]) == 2
        ratio = r["ratios"]["grpc"]["throughput_c4_vs_ort_b4"]
        assert len(ratio["per_round"]) == 2 and 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
        batched = r["ratios"]["grpc"]["throughput_batched_vs_ort"]
        assert len(batched["per_round"]) == 2 and batched["median"] > 0
        assert r["cpu_ms_per_image_batched"]["grpc"]["network"] > 0
        client = r["cpu_ms_per_image_batched"]["grpc"]["ms_per_image"]
        assert 0 <= client.get("client_kernel", 0.0) <= client["client"]  # a part of the client, not a process
    rd4ad = data["results"][0]
    # The image detector is measured through its calibrated network; the score-only ensemble is its comparison.
    assert rd4ad["score_model"] == "ad_inference_fast"
    versus = rd4ad["ratios"]["grpc"]["calibrated_vs_ensemble"]
    assert len(versus["c4"]["per_round"]) == 2 and versus["batched"]["median"] > 0
    assert "ad_inference_scorer_0_0" in rd4ad["cpu_ms_per_image_c4_ensemble"]["grpc"]["ms_per_image"]
    assert "ad_inference_scorer" in rd4ad["breakdown_c1_ms"]["score-only ensemble"]
    assert set(rd4ad["breakdown_c1_ms"]["calibrated network"]) == {"ad_inference_fast"}
    assert data["results"][1]["score_model"] == "kdae_digits"  # a vector detector has no calibrated network
    assert rd4ad["ratios"]["grpc"]["throughput_batched_shm_vs_ort"]["median"] > 0
    assert "cpu_ms_per_image_batched_shm" in rd4ad and "cpu_ms_per_image_batched_shm" not in data["results"][1]
    assert data["server_rss_bytes"] > 0 and (tmp_path / "b.png").stat().st_size > 10_000
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "| ad_inference | grpc |" in text


def test_kd_bench_client_times_every_transport_path(
    exported: ExportResult, demo_root: Path, tmp_path: Path
) -> None:
    rc = client_paths.main(["--repository", str(exported.repository), "--images", str(demo_root / "brick" / "test"),
                            "--count", "16", "--batch-size", "4", "--concurrency", "2",
                            "--output", str(tmp_path / "c.json")])
    assert rc == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert len(rows) == 12 and all(r["images_per_second"] > 0 for r in rows)
    encoded = [r for r in rows if r["encoded"]]
    assert all(r["bytes_sent_per_image"] < 64 * 64 * 3 for r in encoded)


@pytest.mark.parametrize("readme_text", [None, "no markers here\n"])
def test_every_benchmark_reports_a_readme_it_cannot_write_the_same_way(
    readme_text: str | None, tmp_path: Path, capsys
) -> None:
    """kd-bench, kd-compare and kd-bench-faults all write their table through bench.readme.publish: a missing
    README or missing markers is an error message and exit status 1, never a traceback or a silent skip."""
    from bench.readme import publish

    readme = tmp_path / "README.md"
    if readme_text is not None:
        readme.write_text(readme_text)
    assert publish(readme, "bench", "| a |", "make bench", "kd-bench") == 1
    err = capsys.readouterr().err
    assert err.startswith("kd-bench: README table not written:") and "README.md" in err
    assert publish(None, "bench", "| a |", "make bench", "kd-bench") == 0
    assert publish(Path(""), "bench", "| a |", "make bench", "kd-bench") == 0
    if readme_text is not None:
        assert readme.read_text() == readme_text  # nothing half-written


def test_kd_bench_quality_trains_serves_and_tables_each_category(tmp_path: Path) -> None:
    """Tiny settings (64 px, 2 epochs): the figures mean nothing, the path is the benchmark's whole path."""
    from bench import quality

    readme = tmp_path / "README.md"
    begin, end = markers("quality")
    readme.write_text(f"intro\n{begin}\nold\n{end}\n")
    rc = quality.main(["--data-root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                       "--categories", "stars", "coffee", "--methods", "rd4ad", "student", "--image-size", "64",
                       "--epochs", "2", "--n-train", "8", "--n-test-good", "4", "--n-per-defect", "3",
                       "--seconds", "0.3", "--readme", str(readme),
                       "--variant", "rd4ad_paper", "method=rd4ad", "linear_heads=off", "positional_normalization=off"])
    assert rc == 0
    data = json.loads((tmp_path / "runs" / "quality.json").read_text())
    cells = {(c["category"], c["method"]): c for c in data["cells"]}
    assert set(cells) == {(c, m) for c in ("stars", "coffee") for m in ("rd4ad", "student", "rd4ad_paper")}
    variant = json.loads((tmp_path / "runs" / "stars" / "rd4ad_paper" / "train_config.json").read_text())
    assert variant["linear_heads"] == "off" and variant["positional_normalization"] == "off"
    assert not any(".heads." in k for k in load_file(str(tmp_path / "runs" / "stars" / "rd4ad_paper" / "model.safetensors")))
    for cell in cells.values():
        assert 0.0 <= cell["image_auroc"] <= 1.0 and 0.0 <= cell["pixel_auroc"] <= 1.0
        assert cell["train_seconds"] > 0 and cell["served_images_per_second"] > 0
    mean = data["means"]["rd4ad"]["image_auroc"]
    assert abs(mean - (cells[("stars", "rd4ad")]["image_auroc"] + cells[("coffee", "rd4ad")]["image_auroc"]) / 2) < 1e-9
    for (category, _), cell in cells.items():  # each defect kind of the category, against its good images
        kinds = {"stars": {"smudge", "spots", "streak"}, "coffee": {"cutpaste", "erased", "tint"}}[category]
        assert set(cell["image_auroc_by_defect"]) == kinds
        assert all(0.0 <= v <= 1.0 for v in cell["image_auroc_by_defect"].values())
    text = readme.read_text()
    assert "| rd4ad |" in text and "stars image / pixel AUROC" in text and "old" not in text
    assert "| category | defect | rd4ad | student | rd4ad_paper |" in text and "| coffee | tint |" in text
    assert quality.main(["--methods", "student", "--runs", str(tmp_path / "none")]) == 2  # needs its teacher
    assert "| rd4ad_paper |" in text


@pytest.mark.parametrize("spec", [["rd4ad"], ["Bad-Label", "method=rd4ad"], ["x", "feature_pool=2"],
                                  ["x", "epochs"], ["x", "category=coins"], ["x", "no_such_field=1"]])
def test_quality_variants_are_checked_before_any_training(spec: list[str], tmp_path: Path) -> None:
    from bench import quality

    with pytest.raises(ValueError, match="--variant"):
        quality.parse_variants([spec])
    assert quality.main(["--variant", *spec, "--methods", "--runs", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_kd_compare_states_each_speed_up_against_its_own_kind() -> None:
    """The student's speed-up is served against served (batched and single) and in-process against in-process;
    the target is judged on the served, batched figure."""
    from bench.compare import Row, speedup_sentence

    common = dict(method="m", backbone="b", parameters=1, gflops=1.0, pixel_auroc=None, aupro=None, ort_batch1=1.0)
    teacher = Row(model="t", image_auroc=0.99, ort_batch8=100.0, served_grpc=80.0, served_grpc_batched=90.0, **common)
    student = Row(model="s", image_auroc=0.98, ort_batch8=1700.0, served_grpc=400.0, served_grpc_batched=1000.0,
                  **common)
    text, meets = speedup_sentence(teacher, student)
    assert "served over gRPC 11.1x" in text and "5.0x with one" in text and "in-process 17.0x" in text
    assert "1.0 points of image AUROC lost" in text and meets
    slow = Row(model="s", image_auroc=0.99, ort_batch8=1700.0, served_grpc=200.0, served_grpc_batched=400.0, **common)
    text, meets = speedup_sentence(teacher, slow)
    assert "4.4x the teacher's" in text and "no image AUROC lost" in text and not meets
