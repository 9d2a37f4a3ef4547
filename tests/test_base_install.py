"""The base install (``pip install .``, no extras) is the torch-free core and the client, and it scores images.

A fresh virtual environment gets the project without extras (its packages come from PyPI, or pip's cache after
the first run); torch, onnx, onnxruntime and nvidia-pytriton must then be absent, and the installed client must
validate nothing but score real images against the real server that the main environment runs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.embedded import TritonServer

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "pytriton", "scipy", "matplotlib")


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # A clean environment: nothing of the main one (PYTHONPATH, the main venv) leaks into the base install.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_base_install_has_no_heavy_dependency(base_env: Path, tmp_path: Path) -> None:
    probe = ("import importlib.util, json; "
             f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {list(HEAVY)!r}}}))")
    done = _run(base_env, str(base_env / "python"), "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {m: False for m in HEAVY}
    # The core and the client import; the torch parts say clearly what is missing.
    done = _run(base_env, str(base_env / "python"), "-c",
                "import kdcore.contract, kdcore.stats, kdcore.metrics, kdcore.manifest, client.scoring, client.validate",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run(base_env, str(base_env / "python"), "-c", "import training.train", cwd=tmp_path)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr


def test_base_install_client_help_and_score(base_env: Path, server: TritonServer, demo_root: Path,
                                            tmp_path: Path) -> None:
    for args in ([str(base_env / "python"), str(ROOT / "client" / "client.py"), "--help"],
                 [str(base_env / "kd-client"), "score", "--help"]):
        done = _run(base_env, *args, cwd=tmp_path)
        assert done.returncode == 0 and "usage" in done.stdout, (args, done.stderr[-2000:])
    images = demo_root / "brick" / "test"
    done = _run(base_env, str(base_env / "kd-client"), "score", str(images), "--url", server.grpc_url,
                "--output", str(tmp_path / "scores"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with open(tmp_path / "scores" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = sorted(p for p in images.rglob("*.png"))
    assert len(rows) == len(expected) and all(r["status"] == "ok" for r in rows)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    # The same files score the same with the main environment's client (one client, whatever installs it).
    main = subprocess.run([sys.executable, str(ROOT / "client" / "client.py"), "score", str(images), "--url",
                           server.grpc_url, "--output", str(tmp_path / "main")], capture_output=True, text=True,
                          timeout=300)
    assert main.returncode == 0, main.stderr[-3000:]
    with open(tmp_path / "main" / "results.csv", newline="") as f:
        reference = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    assert {r["path"]: float(r["score"]) for r in rows} == pytest.approx(reference, abs=1e-6)
