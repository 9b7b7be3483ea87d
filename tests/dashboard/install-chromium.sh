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

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium on PATH and no apt-get to install it" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "no chromium on PATH, and installing it needs root (or password-less sudo)" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Another apt (another test binary, another engineer) may hold the lock: wait for it, bounded.
apt_opts=(-o DPkg::Lock::Timeout=300 -qq)
if ! $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends chromium >"$log" 2>&1; then
  # The package lists may be missing or stale (a fresh container): refresh them once and retry.
  if ! { $SUDO apt-get "${apt_opts[@]}" update >>"$log" 2>&1 &&
    $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends chromium >>"$log" 2>&1; }; then
    echo "apt-get install chromium failed: $(tail -n 3 "$log" | tr '\n' ' ')" >&2
    exit 1
  fi
fi

if find_browser; then
  exit 0
fi
echo "apt-get installed chromium but no browser binary is on PATH" >&2
exit 1
