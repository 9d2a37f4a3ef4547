"""``kd-console``: start the inspection console (Streamlit) on a served repository, bound to 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def build_parser() -> argparse.ArgumentParser:
    """The options."""
    parser = argparse.ArgumentParser(
        prog="kd-console", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A web page over the served models: images (uploads or a folder: scores, labels, heatmaps, "
        "regions, a sortable gallery and the score histogram), signals (teacher and student side by side on a test "
        "window or a file: intervals, per-step scores, MSP/MSR) and health (readiness, the latest benchmark). A client of the Triton server started by triton_startup_script.sh.")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the exported repository (for the detectors' manifests and stats JSON)")
    parser.add_argument("--url", default="localhost:8001", help="the server's endpoint for --protocol")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="how to reach the server")
    parser.add_argument("--signals", default="data/ecg",
                        help="time-series dataset folder (kd-signal-data) whose test split the signals view offers")
    parser.add_argument("--bench", default="runs/bench",
                        help="folder of benchmark JSON files (kd-bench writes serving.json there): the health view "
                        "shows the newest")
    parser.add_argument("--address", default="127.0.0.1", help="address the page listens on (0.0.0.0: every host)")
    parser.add_argument("--port", type=int, default=8501, help="port of the page")
    return parser


def command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for ``args``."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
            "--server.address", args.address, "--server.port", str(args.port),
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer",  # an operator's page: no developer menu or Deploy button
            "--", "--repository", str(args.repository), "--url", args.url, "--protocol", args.protocol,
            "--signals", str(args.signals), "--bench", str(args.bench)]


def main(argv: list[str] | None = None) -> int:
    """Run the console until interrupted."""
    args = build_parser().parse_args(argv)
    print(f"console: http://{args.address}:{args.port}  (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(command(args))
    except KeyboardInterrupt:
        return 130
