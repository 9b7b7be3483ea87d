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

bash "$(dirname "$0")/../install-package.sh" libfaketime || exit 1

if find_lib; then
  exit 0
fi
echo "apt-get installed libfaketime but its library is not where expected" >&2
exit 1
