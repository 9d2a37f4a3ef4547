"""The hardened ``tritonserver`` flags: one list for the embedded server and the NGC container.

Triton's deployment guide (docs/customization_guide/deploy.md): the server is ready only when every model is,
any model that fails to load stops it, and configs are used exactly as written. The python backend gets 16 MiB
of shared memory per instance. :class:`serving.embedded.TritonServer` adds these to its command line;
docker/Dockerfile.server starts the NGC binary through :func:`main` (``python3 -m serving.flags ...``), so a
flag changed here changes both. Standard library only: the container installs the project's base alone.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

# A batch of 8 float32 256x256 maps is 2 MiB and its uint8 RGB input 1.5 MiB; the default region (1 MiB) would
# make every such request grow the shared memory first. 16 MiB per model instance leaves room for both.
SHM_DEFAULT_BYTES = 16 * 1024 * 1024
SHM_GROWTH_BYTES = 8 * 1024 * 1024

#: Flags every server of this project runs with.
HARDENED_FLAGS: tuple[str, ...] = (
    "--strict-readiness=true",
    "--exit-on-error=true",
    "--disable-auto-complete-config",
    "--log-verbose=0",
    f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
    f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
)


def command(binary: str, args: Sequence[str]) -> list[str]:
    """``binary`` with the hardened flags, then ``args`` (later flags win, so a caller can still override one)."""
    return [binary, *HARDENED_FLAGS, *args]


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with ``tritonserver`` (found on ``PATH``) run with the hardened flags and ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print("usage: python3 -m serving.flags [tritonserver options...]\n"
              "Runs tritonserver with the project's hardened flags first:\n  " + "\n  ".join(HARDENED_FLAGS))
        return
    binary = shutil.which("tritonserver")
    if binary is None:
        sys.exit("serving.flags: tritonserver is not on PATH")
    os.execv(binary, command(binary, args))


if __name__ == "__main__":
    main()
