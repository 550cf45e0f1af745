#!/usr/bin/env bash
# Debian's Chromium for the report test (tests/test_report.py opens the HTML report headless).
set -euo pipefail
if command -v chromium >/dev/null; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing Debian's chromium (headless, for the HTML report test)"
$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
  || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; } \
  || echo "could not install chromium; tests/test_report.py's browser check will be skipped" >&2
