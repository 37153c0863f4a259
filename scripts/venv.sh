#!/bin/sh
# Create the project venv; on a bare Debian as root, first install what venv needs.
set -eu
python=$1 venv=$2
if ! "$python" -m venv "$venv" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing python3-venv (python3 -m venv needs it on Debian)" >&2
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        rm -rf "$venv"
        "$python" -m venv "$venv"
    else
        echo "cannot create a venv: install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    fi
fi
