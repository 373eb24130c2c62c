#!/usr/bin/env bash
# Headless Chromium + its driver for the browser test (tests/test_browser.py, marker `browser`): Debian's packages.
# Idempotent: does nothing when both are on PATH. Needs root (CI runs as root); otherwise prints what to run.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "install_browser.sh: chromium/chromedriver missing; as root run: apt-get update && apt-get install -y chromium chromium-driver" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq chromium chromium-driver
