#!/usr/bin/env bash
# one.sh LABEL BIN|postfix N C S: one harness run; appends its summary line to bench/relay-<date>.txt
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); B=${BENCH_DIR:-$HERE/../../shared/bench}
label=$1; bin=$2; n=$3; c=$4; s=$5
export RELAY_PORT=2525 SINK_PORT=2526
if [[ $bin == postfix ]]; then ctl="$B/postfix-relay.sh"; else ctl="$B/hubrelay-relay.sh"; export HUBRELAY_BIN=$bin; fi
sync; sleep 3
"$B/relay-bench.sh" -l "$label" -n "$n" -c "$c" -s "$s" --start "$ctl start" --stop "$ctl stop" --results "$HERE/relay-$(date -u +%Y%m%d).txt" 2>/dev/null | tail -1
