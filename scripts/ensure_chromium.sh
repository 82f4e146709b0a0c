#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are present for tests/test_book_browser.py.
# Installs the Debian packages `chromium` and `chromium-driver` with apt-get when either binary is
# missing and we are root; otherwise explains what to install. Never fails the build by itself:
# the browser test decides (it fails in CI, where CI=true, and skips elsewhere).
set -uo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"

if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; then
  exit 0
fi

install_cmd="apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver"
if [ "$(id -u)" -ne 0 ]; then
  echo "note: $CHROMIUM or $CHROMEDRIVER is missing and this is not root, so they are not installed." >&2
  echo "      The browser test (tests/test_book_browser.py) needs them; install with:" >&2
  echo "        sudo sh -c '$install_cmd'" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: $CHROMIUM or $CHROMEDRIVER is missing and apt-get is not available;" >&2
  echo "      install Chromium and chromedriver with your package manager for the browser test." >&2
  exit 0
fi

echo "installing Chromium and chromedriver with apt-get (for the browser test)"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
  echo "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium) in $(( $(date +%s) - start )) s"
else
  echo "warning: apt-get could not install chromium/chromium-driver; the browser test will not run" >&2
fi
exit 0
