#!/usr/bin/env bash
# rss.sh BIN N: 64 KiB messages into a hub whose dumpster may hold 2 GB; prints the hub's peak RSS
# and the dumpster size at the end.
bin=$(realpath "$1"); n=$2
HERE=$(cd "$(dirname "$0")" && pwd); B=${BENCH_DIR:-$HERE/../../shared/bench}
CTL=$(mktemp)
cp "$B/hubrelay-relay.sh" "$CTL"; chmod +x "$CTL"
sed -i "s/max_dumpster_size_per_storage_group = \"100MB\"/max_dumpster_size_per_storage_group = \"2GB\"/; s|^HERE=.*|HERE=$B|" "$CTL"
st=$B/.run/hubrelay-2525; rm -f $st
export RELAY_PORT=2525 SINK_PORT=2526 HUBRELAY_BIN=$bin
( for i in $(seq 200); do [[ -f $st ]] && break; sleep 0.1; done; read -r pid d < $st; hwm=0; rss=0; du=0
  while [[ -r /proc/$pid/status ]]; do h=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null) && [[ -n $h ]] && hwm=$h; r=$(awk '/VmRSS/{print $2}' /proc/$pid/status 2>/dev/null) && [[ -n $r ]] && rss=$r; du=$(du -sm $d/data 2>/dev/null | cut -f1); sleep 0.5; done
  echo "  hub: peak_rss_mb=$((hwm/1024)) last_rss_mb=$((rss/1024)) data_on_disk_mb=$du" ) &
$B/relay-bench.sh -l rss -n $n -c 20 -s 65536 --start "$CTL start" --stop "$CTL stop" --results "$HERE/relay-$(date -u +%Y%m%d).txt" 2>/dev/null | tail -1
wait
