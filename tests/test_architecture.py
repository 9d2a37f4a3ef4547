"""The layout rules of README "Architecture", checked over the source: who may import whom, and where the wire
contract's names may be written.

Both checks read the source with :mod:`ast` (docstrings and comments are prose, not code, and are not checked).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from kdcore import contract

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kdcore", "training", "export", "serving", "client", "console", "deploy", "bench")

#: Which project packages each package may import (data -> training -> export -> repository -> server -> client;
#: bench measures all of them). The supervisor in serving/ runs the client's liveness check against its own server.
MAY_IMPORT: dict[str, set[str]] = {
    "kdcore": set(),
    "training": {"kdcore"},
    "export": {"kdcore", "training"},
    "serving": {"kdcore", "client"},
    "client": {"kdcore"},
    "console": {"kdcore", "client"},  # a client of the server: the page over client/
    "deploy": {"kdcore", "serving"},  # manifests from the repository's manifests and the server's flags
    "bench": {"kdcore", "training", "export", "serving", "client"},
}
#: Modules held to a narrower rule than their package: they only write text and files from the contract.
MODULE_MAY_IMPORT: dict[str, set[str]] = {"export.triton_config": {"kdcore"}}
#: Third-party libraries of the base install: all that kdcore and client may use (client adds its Triton client).
BASE_LIBRARIES = {"numpy", "cv2", "pydantic"}
CLIENT_LIBRARIES = BASE_LIBRARIES | {"tritonclient", "tqdm", "grpc", "gevent", "geventhttpclient"}
#: Optional libraries a client module imports lazily, only for the input that needs them (with the extra that
#: installs them): WFDB records for ``client.py score-signal`` need ``wfdb`` (the ``signals`` extra).
OPTIONAL_IMPORTS: dict[str, set[str]] = {"client.signal_io": {"wfdb"}}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import, at any depth (lazy imports in functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _is_backend_adapter(path: Path) -> bool:
    """Triton Python-backend adapters and stand-ins run inside the server, beside copies of what they import."""
    rel = path.relative_to(ROOT).as_posix()
    return rel.startswith(("export/scorer/", "export/decoder/", "export/renderer/", "serving/backends/"))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_flow_allows(package: str) -> None:
    wrong = []
    for path in _sources(package):
        name = _module_name(path)
        allowed = MODULE_MAY_IMPORT.get(name, MAY_IMPORT[package]) | {package}
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not wrong, f"{package} may import only {sorted(MAY_IMPORT[package])}:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("package", "libraries"), [("kdcore", BASE_LIBRARIES), ("client", CLIENT_LIBRARIES)])
def test_core_and_client_need_nothing_beyond_the_base_install(package: str, libraries: set[str]) -> None:
    """No torch, onnx, onnxruntime, pytriton, scipy or matplotlib: a camera PC installs the base alone."""
    wrong = []
    for path in _sources(package):
        allowed = libraries | OPTIONAL_IMPORTS.get(_module_name(path), set())
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top not in PACKAGES and top not in sys.stdlib_module_names and top not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------------------ the contract
#: Names that mean the wire contract wherever they are written.
DISTINCT_NAMES = {contract.RAW_PRED, contract.RAW_MAP, contract.MAP_U8, contract.RAW_SCORE, contract.ENCODED_INPUT,
                  contract.ANOMALOUS, contract.NORMAL}
#: Common words that are tensor names too: checked in the packages that speak to the server.
WIRE_WORDS = {contract.SCORE, contract.LABEL, contract.IMAGE_INPUT, contract.VECTOR_INPUT}
WIRE_PACKAGES = ("export", "serving", "client", "bench")
#: The model-name suffixes of :class:`kdcore.contract.ModelNames`, as they would appear in an f-string.
SUFFIXES = tuple(getattr(contract.ModelNames("x"), p)[1:] for p in
                 ("onnx", "torchscript", "scorer", "score_only", "map8", "decoder", "encoded", "encoded_score",
                  "renderer"))
#: The few places where one of those words is not a tensor name, with the reason.
NOT_WIRE = {
    ("client/client.py", "score"): "the `client.py score` sub-command",
}


def _literals(path: Path) -> list[tuple[int, str]]:
    """String constants that are not docstrings, with f-strings' constant parts."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings and isinstance(node.value, (str, bytes)):
            value = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
            out.append((node.lineno, value))
    return out


def test_no_tensor_model_or_label_name_is_typed_outside_the_contract() -> None:
    wrong = []
    for package in PACKAGES:
        for path in _sources(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "kdcore/contract.py":
                continue
            words = DISTINCT_NAMES | (WIRE_WORDS if package in WIRE_PACKAGES else set())
            for line, value in _literals(path):
                if (rel, value) in NOT_WIRE:
                    continue
                if value in words or value.startswith(SUFFIXES) and value.split("/")[0] in SUFFIXES:
                    wrong.append(f"{rel}:{line}: {value!r}")
    assert not wrong, "use kdcore.contract's names instead of typing them:\n" + "\n".join(wrong)


def test_the_contract_check_would_catch_a_literal(tmp_path: Path) -> None:
    """The checker itself: a module that types a tensor name or a suffix is found."""
    probe = tmp_path / "probe.py"
    probe.write_text('"""doc: anomaly_map in prose is fine"""\nx = {"anomaly_map": 1}\ny = f"{m}_scorer"\n')
    found = [v for _, v in _literals(probe)]
    assert contract.RAW_MAP in found and "_scorer" in found and all("prose" not in v for v in found)


def _layout_block() -> dict[str, str]:
    """README "Layout": the text of each top-level folder's entry."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line and not line.startswith(" "):
            current, _, line = line.partition(" ")
            entries[current] = ""
        if current:
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_layout_matches_the_tree(package: str) -> None:
    """Every module and sub-package of a package is in README "Layout", and everything listed there exists."""
    import re

    text = _layout_block()[f"{package}/"]
    text_outside_parens = re.sub(r"\([^()]*\)", "", re.sub(r"\([^()]*\)", "", text))
    listed = set(re.findall(r"[\w.]+\.py|\w+/", text_outside_parens))
    present = {p.name + ("/" if p.is_dir() else "") for p in (ROOT / package).iterdir()
               if p.name != "__init__.py" and not p.name.startswith((".", "__pycache__"))
               and (p.suffix == ".py" or (p.is_dir() and any(p.rglob("*.py"))))}
    assert listed == present, f"README lists {sorted(listed - present)} that are not there, " \
                              f"misses {sorted(present - listed)}"
