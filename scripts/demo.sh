#!/usr/bin/env bash
# The main job: set up, make a CT-like sample .mla (image + segmentation + boxes),
# reload it, print its header, and show it in napari. Without a display, the
# viewer runs on a virtual screen and a screenshot is written instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p demo_output
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/python -m napari_mlarray.demo --out demo_output "$@"
else
  exec xvfb-run -a -s "-screen 0 1280x1024x24" \
    .venv/bin/python -m napari_mlarray.demo --out demo_output --screenshot demo_output/demo.png "$@"
fi
