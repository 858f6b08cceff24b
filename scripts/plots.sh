#!/usr/bin/env bash
# Regenerates the plots of docs/performance.md in one command: runs the order-expiration
# benchmark at batch 10, 100, 1,000 and 10,000 plus its floor, and the tick-latency benchmark,
# each writing CSV, then draws docs/performance/throughput.png and tick-latency-cdf.png
# (scripts/plots.py, matplotlib pinned by scripts/tools.sh). Needs the local stack
# (scripts/services.sh up); takes a few minutes. The CSV stay in target/bench/.
#
#   scripts/plots.sh             run both benchmarks, then draw
#   scripts/plots.sh --draw      draw from the CSV of the last run only
#
# Environment: SJ_BENCH_ORDERS (default 100000), SJ_BENCH_TICKS (default 1000), and any
# setting as SJ_<SECTION>__<KEY> (e.g. SJ_PROCESSOR__EFFECTS_AHEAD=2) for the processor.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
csv_dir=$root/target/bench
out=$root/docs/performance
mkdir -p "$csv_dir" "$out"
case ${1:-} in
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  --draw) ;;
  "")
    SJ_BENCH_CSV=$csv_dir/order_expiration.csv SJ_BENCH_VARIANTS=floor,batch10,batch100,batch1000,batch10000 \
      cargo bench --bench order_expiration
    SJ_BENCH_CSV=$csv_dir/tick_latency.csv cargo bench --bench tick_latency
    ;;
  *) echo "plots.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac
python=$(scripts/tools.sh matplotlib)
"$python" scripts/plots.py "$csv_dir/order_expiration.csv" "$csv_dir/tick_latency.csv" "$out"
echo "wrote $out/throughput.png and $out/tick-latency-cdf.png"
