#!/usr/bin/env bash
# matrix.sh BIN [BIN...]: three rounds of alternating Postfix / hubrelay runs at each load; hubrelay lines get the hub's CPU ms/msg and peak RSS.
# With several binaries (a before / after comparison) each runs after Postfix in every round, labelled by its file name.
# LOADS="C S;C S" overrides the loads (sessions, message size).
bins=(); for b in "$@"; do bins+=("$(realpath "$b")"); done
IFS=';' read -r -a loads <<< "${LOADS:-20 4096;100 4096;20 65536}"
HERE=$(cd "$(dirname "$0")" && pwd); B=${BENCH_DIR:-$HERE/../../shared/bench}; st=$B/.run/hubrelay-2525
hr() {  # label bin n c s
  local label=$1 bin=$2 nmsg=$3 c=$4 size=$5
  rm -f $st
  ( for i in $(seq 200); do [[ -f $st ]] && break; sleep 0.1; done; pid=$(cut -d' ' -f1 $st); last="0 0 0"; hwm=0
    while [[ -r /proc/$pid/stat ]]; do v=$(awk "{print \$14+\$15, \$14, \$15}" /proc/$pid/stat 2>/dev/null) && last=$v; h=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null) && [[ -n $h ]] && hwm=$h; sleep 0.2; done
    set -- $last; echo "  hub: cpu_ms_per_msg=$(echo "scale=3; $1*10/$nmsg" | bc) peak_rss_mb=$((hwm/1024))" ) &
  "$HERE/one.sh" "$label" "$bin" "$nmsg" "$c" "$size"; wait
}
for rep in 1 2 3; do
  for load in "${loads[@]}"; do
    set -- $load
    "$HERE/one.sh" postfix postfix 20000 "$1" "$2"
    for bin in "${bins[@]}"; do
      label=hubrelay; (( ${#bins[@]} > 1 )) && label=hubrelay-$(basename "$bin")
      hr "$label" "$bin" 20000 "$1" "$2"
    done
  done
done
