#!/bin/sh
# Build dist/botlxc.pyz: botlxc, its templates and its pure-Python dependencies in one file
# that runs with a bare `python3 botlxc.pyz ...` on a minimal host.
set -eu
python=${1:-python3}
build=build/pyz
rm -rf "$build" && mkdir -p "$build" dist
cp botlxc.py "$build"/
cp -r templates "$build"/
site=$("$python" -c 'import click, os; print(os.path.dirname(os.path.dirname(click.__file__)))')
for pkg in click jinja2 markupsafe tenacity; do
    cp -r "$site/$pkg" "$build"/
done
# Compiled speedups cannot be imported from a zip; markupsafe falls back to pure Python.
find "$build" -name '*.so' -delete
find "$build" -name '__pycache__' -prune -exec rm -rf {} +
"$python" -m zipapp "$build" -m botlxc:main_exit -p '/usr/bin/env python3' -o dist/botlxc.pyz
echo "built dist/botlxc.pyz ($(du -k dist/botlxc.pyz | cut -f1) KiB)" >&2
