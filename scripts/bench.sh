#!/usr/bin/env bash
# make bench: runs the benchmarks behind the speed targets of each issue and
# prints one summary. Speed targets are checked here, never by timed
# assertions in tests. Needs the setup (kernel, qemu) done by `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPEMAN_INIT_BINARY="${HYPEMAN_INIT_BINARY:-$PWD/bin/hypeman-init}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run() { # package, benchmark regex, benchtime
	echo "== $1 $2" >&2
	go test -run '^$' -bench "$2" -benchtime "$3" -timeout 30m "$1" 2>&1 | grep -E '^(Benchmark|--- FAIL|FAIL|panic)' | tee -a "$out"
}

run ./internal/daemon 'BootToProgramStart' 3x
run ./internal/images 'Convert100MB' 2x
run ./internal/instances 'List200' 500x
run ./internal/events 'WaitLatency$' 1000x
run ./internal/events 'IdleWaiterMemory|WaitFanout1000' 10x
run ./internal/daemon 'StandbyRestore' 2x
run ./internal/daemon 'ExecAndCopy' 2x
run ./internal/hypervisor/qemu 'Snapshot' 2x || true
run ./internal/daemon 'WarmCreate' 1x

metric() { # line-regex, unit → value
	grep -E "$1" "$out" | head -1 | awk -v u="$2" '{for (i=2;i<=NF;i++) if ($i==u) print $(i-1)}'
}

cat <<SUMMARY

==================== hypeman bench summary ====================
Boot (issue 2)     program start through our stack: $(metric BootToProgramStart stack-s/op) s, raw qemu: $(metric BootToProgramStart raw-s/op) s, ratio stack/raw: $(metric BootToProgramStart stack/raw)
Images (issue 2)   ~100 MB image pull+convert: $(grep -E 'Convert100MB' "$out" | awk '{printf "%s ", $1; for (i=2;i<=NF;i++) if ($i=="ns/op") printf "%.2f s  ", $(i-1)/1e9}')
List (issue 3)     200 instances: p50 $(metric List200 p50-ms) ms, p99 $(metric List200 p99-ms) ms (target p99 < 5 ms)
Wait (issue 4)     publish→response p50 $(metric 'WaitLatency-' p50-µs) µs, p99 $(metric 'WaitLatency-' p99-µs) µs (target ≤ 20 ms); idle waiter $(metric IdleWaiterMemory bytes/waiter) bytes
Standby (issue 5)  per memory storage setting (512 MB guest; restore/cold goal ≤ 0.25):
$(for c in none zstd-1 zstd-19 lz4-0 lz4-9 zstd-19-delayed; do printf '                   %-16s cold %s s, standby %s s, restore→Running %s s, restore/cold %s, snapshot %s MiB = %s × memory%s\n' "$c" \
    "$(metric "comp=$c-[0-9]+[[:space:]]" cold-s)" "$(metric "comp=$c-[0-9]+[[:space:]]" standby-s)" "$(metric "comp=$c-[0-9]+[[:space:]]" restore-s)" "$(metric "comp=$c-[0-9]+[[:space:]]" restore/cold)" \
    "$(metric "comp=$c-[0-9]+[[:space:]]" snapshot-MiB)" "$(metric "comp=$c-[0-9]+[[:space:]]" snapshot/memory)" \
    "$(v=$(metric "comp=$c-[0-9]+[[:space:]]" compress-s); [ -n "$v" ] && echo ", compressed in the background in $v s")"; done)
Warm (issue 13)    create→Running cold $(metric WarmCreate cold-s) s, warm $(metric WarmCreate warm-s) s, warm/cold $(metric WarmCreate warm/cold) (target ≤ 0.15)
                   PSS of 10 idle instances: warm $(metric WarmCreate warm10-PSS-MiB) MiB, cold $(metric WarmCreate cold10-PSS-MiB) MiB, warm/cold $(metric WarmCreate PSS-warm/cold) (target ≤ 0.35)
Agent (issue 6)    exec echo p50 $(metric ExecAndCopy exec-p50-ms) ms, p99 $(metric ExecAndCopy exec-p99-ms) ms; cp 50 MB in $(metric ExecAndCopy cp-in-MB/s) MB/s, out $(metric ExecAndCopy cp-out-MB/s) MB/s
================================================================
SUMMARY
if grep -qE '^(--- FAIL|FAIL|panic)' "$out"; then echo "some benchmarks failed" >&2; exit 1; fi
