"""The console's page (Streamlit): images (uploads and folders), signals (teacher and student side by side) and health.

Run by ``kd-console`` (``streamlit run console/app.py -- --repository R --url U``); every figure comes from the
served models through :mod:`console.views`, which the tests call directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

if __package__ in (None, ""):  # run by `streamlit run`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from console.views import (  # noqa: E402
    ORDERS,
    ConsoleError,
    ModelCard,
    benchmark_figures,
    file_window,
    load_test_split,
    model_cards,
    read_signal_upload,
    score_folder,
    score_histogram,
    score_upload,
    score_window,
    server_health,
    sort_gallery,
    teacher_and_student,
)
from kdcore.tiling import TilingConfig  # noqa: E402

VIEWS = ("Images", "Signals", "Health")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="console/app.py")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--signals", default="data/ecg")
    parser.add_argument("--bench", default="runs/bench")
    # `streamlit run app.py -- ARGS` may hand the script the "--" too
    return parser.parse_known_args([a for a in sys.argv[1:] if a != "--"])[0]


def _card_text(card: ModelCard) -> str:
    # Markdown, not st.table: Streamlit's tables need pyarrow, whose current wheels need NumPy 2 (pinned at 1.26)
    metrics = "\n".join(f"- {k.replace('_', ' ')}: {v:.3f}" for k, v in card.test_metrics.items())
    return f"**{card.name}**: {card.method}, input `{card.input}`\n\nTest split (stats JSON):\n{metrics}"


def _images(cards: list[ModelCard], options: argparse.Namespace) -> None:
    images = [c for c in cards if c.image]
    if not images:
        st.info(f"no image detector in {options.repository}")
        return
    names = [c.name for c in images]
    card = images[names.index(st.sidebar.selectbox("Image detector", names, key="model"))]
    st.sidebar.markdown(_card_text(card))
    tile = st.sidebar.number_input("Tile frames larger than (px; 0: whole frames, or the model's patch grid)",
                                   min_value=0, max_value=8192, value=0, step=64, key="tile")
    tiling = TilingConfig(tile_size=int(tile)) if tile >= 8 else None
    upload_tab, folder_tab = st.tabs(["Upload", "Folder"])
    with upload_tab:
        uploads = st.file_uploader("Images", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"],
                                   accept_multiple_files=True, key="images")
        for upload in uploads or []:
            try:
                scored = score_upload(upload.name, upload.getvalue(), card.name, options.url, options.protocol, tiling)
            except ConsoleError as e:
                st.error(str(e))
                continue
            tiles = f", {scored.tiles} tiles" if scored.tiles > 1 else ""
            st.text(f"{scored.name}: score {scored.score:.3f}, {scored.label}, {len(scored.regions)} region(s){tiles}")
            st.image(scored.overlay, caption=f"{scored.name}: heatmap and regions", output_format="PNG")
    with folder_tab:
        folder = st.text_input("Folder on the console's machine", key="folder")
        if st.button("Score folder", key="score_folder") and folder:
            try:
                with st.spinner(f"scoring {folder} ..."):
                    st.session_state["gallery"] = (card.name, score_folder(folder, card.name, options.url,
                                                                           options.protocol, tiling))
            except ConsoleError as e:
                st.session_state.pop("gallery", None)
                st.error(str(e))
        if st.session_state.get("gallery", (None,))[0] == card.name:
            _gallery(st.session_state["gallery"][1])


def _gallery(gallery) -> None:
    scored = gallery.scored
    anomalous = sum(s.score >= 0.5 for s in scored)
    st.text(f"{gallery.folder}: {len(scored)} scored, {anomalous} anomalous, {len(gallery.errors)} not scored"
            + (f", {gallery.skipped} beyond the limit" if gallery.skipped else ""))
    for name, reason in gallery.errors:
        st.warning(f"{name}: {reason}")
    if not scored:
        return
    st.image(score_histogram([s.score for s in scored]), caption="scores against the decision line (0.5)")
    order = st.selectbox("Order", ORDERS, key="order")
    ordered = sort_gallery(scored, order)
    st.markdown("| # | image | score | label | regions |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {i + 1} | {s.name} | {s.score:.3f} | {s.label} | {len(s.regions)} |" for i, s in enumerate(ordered)))
    shown = st.slider("Heatmaps shown", 1, len(ordered), min(12, len(ordered)), key="shown")
    columns = st.columns(4)
    for i, s in enumerate(ordered[:shown]):
        columns[i % 4].image(s.overlay, caption=f"{s.name}: {s.score:.3f}", output_format="PNG")


def _signals(cards: list[ModelCard], options: argparse.Namespace) -> None:
    series = [c for c in cards if c.series]
    if not series:
        st.info(f"no time-series detector in {options.repository} (kd-train-signal, then kd-export)")
        return
    names = [c.name for c in series]
    chosen = st.sidebar.multiselect("Time-series detectors", names, default=[c.name for c in teacher_and_student(cards)],
                                    key="series_models")
    for name in chosen:
        st.sidebar.markdown(_card_text(series[names.index(name)]))
    source = st.radio("Window from", ["test split", "file"], horizontal=True, key="source")
    try:
        if source == "test split":
            root = st.text_input("Dataset folder (kd-signal-data)", options.signals, key="signals_root")
            split = load_test_split(root)
            anomalous = [i for i in range(len(split.labels)) if split.labels[i].any()]
            index = st.selectbox("Window", range(len(split.labels)), index=anomalous[0] if anomalous else 0,
                                 format_func=split.describe, key="window")
            window = split.window(int(index))
        else:
            upload = st.file_uploader("Record (.npy or .csv, 128 Hz, one column per lead)", type=["npy", "csv"],
                                      key="record")
            if upload is None:
                return
            signal = read_signal_upload(upload.name, upload.getvalue())
            steps = max(c.window or 0 for c in series if c.name in chosen) if chosen else series[0].window or 256
            start = st.slider("Window start (step)", 0, signal.steps - steps, 0, key="start") \
                if signal.steps > steps else 0
            window = file_window(signal, start, steps)
        if not chosen:
            st.info("pick a detector in the sidebar")
            return
        answers = score_window(window, [series[names.index(n)] for n in chosen], options.url, options.protocol)
    except ConsoleError as e:
        st.error(str(e))
        return
    truth = ", ".join(f"{i.start}..{i.end}" for i in window.truth)
    st.text(f"{window.title}: true intervals {truth or 'none'}" if window.labels is not None else window.title)
    for column, answer in zip(st.columns(len(answers)), answers):
        found = ", ".join(f"{i.start}..{i.end}" for i in answer.intervals) or "none"
        squeezed = ("MSP " + (f"{answer.msp:.3f}" if answer.msp is not None else "n/a (no predicted point)")
                    + ", MSR " + (f"{answer.msr:.3f}" if answer.msr is not None else "n/a (no true interval)")
                    if window.labels is not None else "MSP/MSR need labels (a test split's window)")
        column.text(f"{answer.model}: score {answer.score:.3f}, {answer.label}\nintervals {found}\n{squeezed}")
        column.image(answer.plot, caption=f"{answer.model}: channels, per-step score, intervals", output_format="PNG")


def _health(cards: list[ModelCard], options: argparse.Namespace) -> None:
    try:
        health = server_health(options.url, options.protocol, [c.name for c in cards])
        words = {"server live": ("live", "NOT LIVE")}
        st.markdown("\n".join(f"- {name}: {words.get(name, ('ready', 'NOT READY'))[0 if ok else 1]}"
                               for name, ok in health.items()))
    except ConsoleError as e:
        st.error(str(e))
    try:
        figures = benchmark_figures(options.bench)
    except ConsoleError as e:
        st.error(str(e))
        return
    if figures is None:
        st.info(f"no benchmark JSON in {options.bench} (make bench writes one)")
        return
    st.subheader("Latest benchmark")
    st.text(f"{figures.path}, written {figures.written}")
    st.markdown("\n".join(figures.lines))
    if figures.plot:
        st.image(figures.plot, caption=Path(figures.plot).name)


def main() -> None:
    """Lay the page out."""
    options = _options()
    st.set_page_config(page_title="KD anomaly console", layout="wide")
    st.title("Inspection console")
    try:
        cards = model_cards(options.repository)
    except ConsoleError as e:
        st.error(str(e))
        return
    view = st.sidebar.radio("View", VIEWS, key="view")
    {"Images": _images, "Signals": _signals, "Health": _health}[view](cards, options)


main()
