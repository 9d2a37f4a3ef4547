"""The console's page (Streamlit): pick a detector, drop images, see each scored with its heatmap and regions.

Run by ``kd-console`` (``streamlit run console/app.py -- --repository R --url U``); every figure comes from the
served models through :mod:`console.views`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

if __package__ in (None, ""):  # run by `streamlit run`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from console.views import ConsoleError, model_cards, score_upload, server_health  # noqa: E402


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="console/app.py")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    # `streamlit run app.py -- ARGS` may hand the script the "--" too
    return parser.parse_known_args([a for a in sys.argv[1:] if a != "--"])[0]


def main() -> None:
    """Lay the page out."""
    options = _options()
    st.set_page_config(page_title="KD anomaly console", layout="wide")
    st.title("Inspection console")
    try:
        cards = [c for c in model_cards(options.repository) if c.image]
    except ConsoleError as e:
        st.error(str(e))
        return
    if not cards:
        st.error(f"no image detector in {options.repository}")
        return
    names = [c.name for c in cards]
    name = st.sidebar.selectbox("Model", names, key="model")
    card = cards[names.index(name)]
    st.sidebar.markdown(f"**{card.name}**: {card.method}, input `{card.input}`")
    # Markdown, not st.table: Streamlit's tables need pyarrow, whose current wheels need NumPy 2 (pinned at 1.26)
    st.sidebar.markdown("Test split (stats JSON):\n" + "\n".join(
        f"- {k.replace('_', ' ')}: {v:.3f}" for k, v in card.test_metrics.items()))
    try:
        health = server_health(options.url, options.protocol, [card.name])
        st.sidebar.write("Health: " + ", ".join(f"{k} {'ok' if v else 'NOT READY'}" for k, v in health.items()))
    except ConsoleError as e:
        st.sidebar.error(str(e))
    uploads = st.file_uploader("Images", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"],
                               accept_multiple_files=True, key="images")
    for upload in uploads or []:
        try:
            scored = score_upload(upload.name, upload.getvalue(), card.name, options.url, options.protocol)
        except ConsoleError as e:
            st.error(str(e))
            continue
        st.text(f"{scored.name}: score {scored.score:.3f}, {scored.label}, {len(scored.regions)} region(s)")
        st.image(scored.overlay, caption=f"{scored.name}: heatmap and regions", output_format="PNG")


main()
