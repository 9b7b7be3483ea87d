#!/usr/bin/env bash
# Makes a headless Chromium available for tests/dashboard.rs and prints the path of its binary on
# stdout. Idempotent (an installed browser is found, not reinstalled), non-interactive and quiet.
# Exit 1 with the reason on stderr where no browser can be had (no apt, not root, no network).
set -uo pipefail

find_browser() {
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if path="$(command -v "$name" 2>/dev/null)"; then
      echo "$path"
      return 0
    fi
  done
  return 1
}

if find_browser; then
  exit 0
fi

bash "$(dirname "$0")/../install-package.sh" chromium || exit 1

if find_browser; then
  exit 0
fi
echo "apt-get installed chromium but no browser binary is on PATH" >&2
exit 1
