#!/usr/bin/env bash
# Gradescope: runs once, as root, when the autograder image is built (Ubuntu base image).
# Installs the grading dependencies (CPU builds of torch/torchvision, pinned as in
# requirements.txt) into /opt/ddpm-grader -- outside /autograder/source, because the
# unprivileged worker user must be able to import torch while /autograder/source is mode 700 --
# and creates that user.
set -euo pipefail
SOURCE="${AUTOGRADER_ROOT:-/autograder}/source"
VENV="${AUTOGRADER_VENV:-/opt/ddpm-grader}"

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip

pin() { grep -E "^$1==" "$SOURCE/requirements.txt" | head -1 | sed 's/[[:space:]]*#.*//'; }
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install --index-url https://download.pytorch.org/whl/cpu \
    "$(pin torch)" "$(pin torchvision)"
"$VENV/bin/python" -m pip install "numpy>=1.26" "psutil>=5.9"
# tomllib is in the standard library from Python 3.11; older images get tomli.
"$VENV/bin/python" -c 'import tomllib' 2>/dev/null || "$VENV/bin/python" -m pip install tomli
chmod -R a+rX "$VENV"

# The user that runs student code: no home, no shell, no group shared with anything.
id autograder-student >/dev/null 2>&1 || \
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin autograder-student
