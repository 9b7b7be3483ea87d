#!/usr/bin/env bash
# Makes libfaketime available for tests/clocks.rs and prints the path of its preload library on
# stdout. Idempotent, non-interactive and quiet; exit 1 with the reason on stderr where it cannot
# be had (no apt, not root, no package mirror).
set -uo pipefail

find_lib() {
  for path in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 \
    /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
    if [ -f "$path" ]; then
      echo "$path"
      return 0
    fi
  done
  return 1
}

if find_lib; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no libfaketime and no apt-get to install it" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "no libfaketime, and installing it needs root (or password-less sudo)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
apt_opts=(-o DPkg::Lock::Timeout=300 -qq)
if ! $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends libfaketime >"$log" 2>&1; then
  if ! { $SUDO apt-get "${apt_opts[@]}" update >>"$log" 2>&1 &&
    $SUDO apt-get "${apt_opts[@]}" install -y --no-install-recommends libfaketime >>"$log" 2>&1; }; then
    echo "apt-get install libfaketime failed: $(tail -n 3 "$log" | tr '\n' ' ')" >&2
    exit 1
  fi
fi
if find_lib; then
  exit 0
fi
echo "apt-get installed libfaketime but its library is not where expected" >&2
exit 1
