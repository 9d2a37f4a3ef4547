"""``kd-bench-client``: what each of the scoring client's transport paths costs and gains, on this machine.

Scores the same camera-like JPEG files (the demo test images, re-encoded at quality 90 and repeated to a few
hundred files) with ``client.scoring.score_images`` over gRPC and HTTP, each three ways: decoded pixels over
the socket, decoded pixels through system shared memory, and the encoded files decoded by the server. Each
variant runs with and without the anomaly maps in the reply (a full-resolution float32 map is 4x the uint8
input). Prints a table of images/s, p50 / p99 latency and bytes sent and received per image, and writes JSON.

It starts its own embedded tritonserver on free loopback ports (shared memory needs client and server on one
host), so it is a number for this machine, not a network.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from client.scoring import ScoreConfig, score_images
from kdcore.imageio import read_image
from kdcore.manifest import MANIFEST_FILE, Manifest, validation_folder

VARIANTS = [("none", False), ("system", False), ("none", True)]


def jpeg_copies(folder: Path, target: Path, count: int, quality: int = 90) -> list[Path]:
    """``count`` JPEG files made from the images under ``folder`` (cycled), like a camera would send."""
    sources = sorted(p for p in folder.rglob("*.png"))
    if not sources:
        raise FileNotFoundError(f"no PNG images under {folder}")
    files = []
    for i in range(count):
        image = read_image(sources[i % len(sources)])
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise OSError("JPEG encoding failed")
        path = target / f"{i:05d}.jpg"
        path.write_bytes(data.tobytes())
        files.append(path)
    return files


def run_variant(url: str, protocol: str, files: list[Path], *, shared_memory: str, encoded: bool, maps: bool,
                model: str, batch_size: int, concurrency: int, size: int) -> dict:
    """One timed run (after a short warm-up run) of one transport variant."""
    config = ScoreConfig(model=model, url=url, protocol=protocol, shared_memory=shared_memory, encoded=encoded,
                         maps=maps, batch_size=batch_size, concurrency=concurrency)
    score_images(files[: 2 * batch_size * concurrency], config, lambda r: None)  # warm-up
    errors = []
    summary = score_images(files, config, lambda r: errors.append(r.error) if not r.ok else None)
    if errors:
        raise RuntimeError(f"{len(errors)} images failed: {errors[0]}")
    d = summary.to_dict()
    pixels = size * size * 3
    sent = float(np.mean([p.stat().st_size for p in files])) if encoded else (0.0 if shared_memory == "system" else pixels)
    received_map = 0 if not maps or shared_memory == "system" else size * size * 4
    return {
        "protocol": protocol, "shared_memory": shared_memory, "encoded": encoded, "maps": maps,
        "images_per_second": d["images_per_second"], "p50_ms": d["latency_ms"]["p50"], "p99_ms": d["latency_ms"]["p99"],
        "bytes_sent_per_image": sent, "map_bytes_received_per_image": received_map,
    }


def _label(row: dict) -> str:
    how = "encoded JPEG" if row["encoded"] else ("pixels via shm" if row["shared_memory"] == "system" else "pixels")
    return f"{row['protocol']:4s} {how}"


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    lines = ["| path | maps | images/s | p50 ms | p99 ms | bytes sent / image | map bytes / image |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_label(r)} | {'yes' if r['maps'] else 'no'} | {r['images_per_second']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['bytes_sent_per_image']:,.0f} | "
                     f"{r['map_bytes_received_per_image']:,.0f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("`: "),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="exported model repository")
    p.add_argument("--model", default="ad_inference", help="ensemble to call (needs <model>_encoded too)")
    p.add_argument("--images", type=Path, default=Path("data/demo/brick/test"), help="folder of PNG images to send")
    p.add_argument("--count", type=int, default=240, help="files per timed run")
    p.add_argument("--batch-size", type=int, default=8, help="images per request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--output", type=Path, default=Path("runs/bench/client_paths.json"), help="JSON results")
    return p


def main(argv: list[str] | None = None) -> int:
    """Start a server, run every variant, print the table and write the JSON."""
    from serving.embedded import TritonServer, free_port

    args = build_parser().parse_args(argv)
    manifest = Manifest.load(validation_folder(args.repository, args.model) / MANIFEST_FILE)
    size = int(manifest.input.dims[0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = jpeg_copies(args.images, Path(tmp), args.count)
        with TritonServer(args.repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port()) as server:
            for protocol in ("grpc", "http"):
                for maps in (False, True):
                    for shared_memory, encoded in VARIANTS:
                        row = run_variant(server.url(protocol), protocol, files, shared_memory=shared_memory, encoded=encoded,
                                          maps=maps, model=args.model, batch_size=args.batch_size,
                                          concurrency=args.concurrency, size=size)
                        print(f"{_label(row)}, maps {maps}: {row['images_per_second']:.0f} images/s, "
                              f"p99 {row['p99_ms']:.1f} ms", file=sys.stderr)
                        rows.append(row)
    print(table(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": args.model, "input_size": size, "files": args.count,
                                       "batch_size": args.batch_size, "concurrency": args.concurrency,
                                       "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
