#!/usr/bin/env bash
# The soak benchmark (bench/soak/soak.py) with matplotlib for its plot, installed from PyPI into a
# virtualenv of its own (bench/soak/.venv). Arguments go to soak.py, e.g. --messages 200000.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=bench/soak/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q matplotlib
fi
cargo build --release
exec "$venv/bin/python" bench/soak/soak.py --bin target/release/hubrelay "$@"
