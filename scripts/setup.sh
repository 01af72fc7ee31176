#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian-like machine:
# system packages for a virtual display (Xvfb + the Qt xcb libraries), then a
# virtual environment in .venv with the package and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v Xvfb >/dev/null 2>&1 || need_apt+=(xvfb xauth)
for lib in libxcb-icccm.so.4 libxcb-keysyms.so.1 libxkbcommon-x11.so.0 libEGL.so.1 libGL.so.1 libfontconfig.so.1 libdbus-1.so.3; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need_apt+=(libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3)
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(printf '%s\n' "${need_apt[@]}" libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libgl1-mesa-dri | sort -u) >/dev/null
  else
    echo "warning: missing system packages (${need_apt[*]}); install them with apt-get as root" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1 || true
  if "$PY" -m uv --version >/dev/null 2>&1; then
    "$PY" -m uv venv -q .venv
  else
    "$PY" -m venv .venv
  fi
fi
if .venv/bin/python -m uv --version >/dev/null 2>&1 || "$PY" -m uv --version >/dev/null 2>&1; then
  "$PY" -m uv pip install -q -p .venv/bin/python -e ".[test]"
else
  .venv/bin/python -m pip install -q -e ".[test]"
fi
