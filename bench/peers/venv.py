"""The peer venv: a virtual environment of its own for anomalib, the yardstick's other side.

anomalib 2.7 pins numpy 2 and a newer torch than the project (numpy < 2 because of nvidia-pytriton), so it cannot
be installed beside the project: it is a yardstick, not a dependency. :func:`ensure_peer_venv` creates the venv
once (about 6 GB: PyPI's torch 2.14.1 is the CUDA build, which runs on the CPU too), with every package pinned to
the set that was checked to install and run together, and records the pins in a stamp file; later calls with
the same pins reuse it at once. ``python -m bench.peers.venv`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

#: Where the peer venv lives by default (the repository root's ``.venv-peers``, ignored by git).
DEFAULT_VENV = Path(".venv-peers")
#: What is asked for: anomalib and the versions of its stack that the yardstick was checked with.
REQUIREMENTS = (
    "anomalib==2.7.0",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    "lightning==2.6.6",
)
#: Everything that install brought (``pip freeze`` of a fresh peer venv, Python 3.11, x86_64), as constraints:
#: a later install resolves to the same versions. Packages a platform does not need are simply not installed.
CONSTRAINTS = (
    "aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0", "anomalib==2.7.0", "anyio==4.16.0",
    "attrs==26.1.0", "click==8.5.1", "cloudpickle==3.1.3", "contourpy==1.3.3", "cuda-bindings==13.5.0",
    "cuda-pathfinder==1.9.1", "cuda-toolkit==13.0.3.0", "cycler==0.12.1", "docstring_parser==0.18.0",
    "einops==0.8.2", "filelock==4.3.2", "fonttools==4.68.0", "FrEIA==0.2", "frozenlist==1.8.0",
    "fsspec==2026.9.0", "h11==0.16.0", "hf-xet==1.8.0", "httpcore2==2.17.0", "httpx2==2.17.0",
    "huggingface_hub==2.4.0", "idna==3.21", "imagecodecs==2026.3.6", "ImageIO==2.38.2", "Jinja2==3.1.6",
    "joblib==1.6.0", "jsonargparse==4.46.0", "kiwisolver==1.5.1", "kornia==0.9.0", "kornia_rs==0.2.0",
    "lazy-loader==0.6", "lightning==2.6.6", "lightning-utilities==0.15.3", "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4", "matplotlib==3.11.2", "mdurl==0.1.2", "mpmath==1.3.0", "multidict==7.2.1",
    "narwhals==2.29.0", "networkx==3.6.1", "numpy==2.4.6", "nvidia-cublas==13.1.1.3",
    "nvidia-cuda-cupti==13.0.85", "nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-runtime==13.0.96",
    "nvidia-cudnn-cu13==9.24.0.43", "nvidia-cufft==12.0.0.61", "nvidia-cufile==1.15.1.6",
    "nvidia-curand==10.4.0.35", "nvidia-cusolver==12.0.4.66", "nvidia-cusparse==12.6.3.3",
    "nvidia-cusparselt-cu13==0.8.1", "nvidia-nccl-cu13==2.30.7", "nvidia-nvjitlink==13.5.37",
    "nvidia-nvshmem-cu13==3.4.5", "nvidia-nvtx==13.0.85", "omegaconf==2.4.0", "opencv-python-headless==5.1.0.95",
    "packaging==26.4", "pandas==3.1.1", "pillow==13.0.0", "platformdirs==4.14.9", "propcache==0.5.4",
    "Pygments==2.21.0", "pyparsing==3.3.3", "python-dateutil==4.0.0", "pytorch-lightning==2.6.6",
    "PyYAML==6.0.4", "rich==15.0.0", "rich-argparse==1.8.0", "safetensors==0.8.0", "scikit-image==0.26.0",
    "scikit-learn==1.9.1", "scipy==1.17.1", "setuptools==84.2.1", "sympy==1.14.0", "threadpoolctl==3.8.0",
    "tifffile==2026.3.3", "timm==1.0.31", "torch==2.14.1", "torchmetrics==1.9.0", "torchvision==0.29.1",
    "tqdm==4.70.1", "triton==3.8.0", "truststore==0.10.5", "typeshed_client==2.15.0", "typing_extensions==4.16.0",
    "tzdata==2026.6", "yarl==1.25.1",
)
#: The stamp in the venv that says which pins it was built with.
STAMP = ".peers-stamp"


class PeerVenvError(RuntimeError):
    """The peer venv could not be created or is unusable; the message says what failed and how to retry."""


def pins_digest() -> str:
    """A digest of the pins and the interpreter's minor version: what the stamp records."""
    text = "\n".join((f"python{sys.version_info.major}.{sys.version_info.minor}", *REQUIREMENTS, *CONSTRAINTS))
    return hashlib.sha256(text.encode()).hexdigest()


def venv_python(venv: Path) -> Path:
    """The venv's interpreter (``bin/python``)."""
    return Path(venv) / "bin" / "python"


def is_ready(venv: Path) -> bool:
    """True when ``venv`` was built with the current pins (its stamp matches) and has its interpreter."""
    stamp = Path(venv) / STAMP
    return venv_python(venv).is_file() and stamp.is_file() and stamp.read_text().strip() == pins_digest()


def _run(command: list[str], what: str, venv: Path) -> None:
    proc = subprocess.run(command, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise PeerVenvError(f"{what} failed (exit {proc.returncode}); the peer venv {venv} is left without its "
                            f"stamp and will be rebuilt on the next try. Last output:\n{tail}")


def ensure_peer_venv(venv: Path = DEFAULT_VENV, *, rebuild: bool = False) -> Path:
    """Creates the peer venv with the pinned anomalib stack, or reuses it; returns its interpreter.

    Idempotent: a venv whose stamp records the current pins is reused without running pip. A venv without a
    matching stamp (never finished, or other pins) is deleted and built again, so a half-built one never counts.
    Needs PyPI (a few minutes and about 6 GB the first time).

    Args:
        venv: The venv folder.
        rebuild: Build it again even if it is ready.

    Raises:
        PeerVenvError: ``venv`` or pip failed; the message has the end of pip's output.
    """
    venv = Path(venv)
    if not rebuild and is_ready(venv):
        return venv_python(venv)
    if venv.exists():
        if any(venv.iterdir()) and not (venv / "pyvenv.cfg").is_file():
            raise PeerVenvError(f"{venv} exists and is not a virtual environment; choose another --peer-venv folder")
        shutil.rmtree(venv)
    _run([sys.executable, "-m", "venv", str(venv)], "python -m venv", venv)
    python = str(venv_python(venv))
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(CONSTRAINTS) + "\n")
    _run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], "upgrading pip", venv)
    _run([python, "-m", "pip", "install", "--quiet", *REQUIREMENTS, "-c", str(constraints)],
         "pip install " + " ".join(REQUIREMENTS), venv)
    _run([python, "-c", "import anomalib.models.image.patchcore.torch_model, timm, cv2"], "importing anomalib", venv)
    (venv / STAMP).write_text(pins_digest() + "\n")
    return venv_python(venv)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peers.venv``: create (or check) the peer venv."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.venv",
        description="Create the peer venv for kd-bench-quality --peers: anomalib " + REQUIREMENTS[0].split("==")[1]
        + " with its pinned stack (" + ", ".join(REQUIREMENTS[1:]) + ") in a virtual environment of its own. "
        "Reused when its stamp matches the pins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the venv folder")
    parser.add_argument("--rebuild", action="store_true", help="delete and build it again even if it is ready")
    args = parser.parse_args(argv)
    try:
        python = ensure_peer_venv(args.venv, rebuild=args.rebuild)
    except PeerVenvError as exc:
        print(f"bench.peers.venv: {exc}", file=sys.stderr)
        return 1
    print(f"peer venv ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
