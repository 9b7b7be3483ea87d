#!/usr/bin/env bash
# Installs the Debian package $1 for a test, quietly and non-interactively, waiting (bounded) for
# another apt to finish; refreshes the package lists once if they are missing or stale. Exit 1 with
# the reason on stderr where it cannot be done (no apt, not root and no password-less sudo, no
# mirror). The callers check for what they need first, so an installed package is not reinstalled.
set -uo pipefail
package="$1"

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no $package and no apt-get to install it" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "no $package, and installing it needs root (or password-less sudo)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
apt_opts=(-o DPkg::Lock::Timeout=300 -qq)
if ! $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends "$package" >"$log" 2>&1; then
  if ! { $SUDO apt-get "${apt_opts[@]}" update >>"$log" 2>&1 &&
    $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends "$package" >>"$log" 2>&1; }; then
    echo "apt-get install $package failed: $(tail -n 3 "$log" | tr '\n' ' ')" >&2
    exit 1
  fi
fi
