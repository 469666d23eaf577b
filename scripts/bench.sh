#!/usr/bin/env bash
# make bench: coldship against its peers, same data, same run.
# Prints wall time, MB/s, CPU seconds, peak RSS and ratios, the targets and
# whether each is met, and writes bench/out/results.md. Sections
# (BENCH_SECTIONS, default all): local (tmpfs: random and sparse images
# against cp, age, openssl, rsync; scripts/bench-local.sh), memory (2
# million blocks: peak RSS and time per block; scripts/bench-memory.sh),
# sftp, s3, dr, live (scripts/bench-NAME.sh say what they measure). The
# sftp section's sparse image: BENCH_SPARSE (16G) with
# BENCH_SPARSE_DATA_MIB (1024) of data.
# Page cache is warm for every tool alike (the image is read once first).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="$PATH:$(go env GOPATH)/bin"
bin=$root/bin/coldship
work=${BENCH_DIR:-$root/bench/work}
out=$root/bench/out
sparse=${BENCH_SPARSE:-16G}
sparse_data_mib=${BENCH_SPARSE_DATA_MIB:-1024}
sections=${BENCH_SECTIONS:-local memory sftp s3 dr live}
mkdir -p "$work" "$out"
# Always the coldship of this tree: a stale binary would measure old code.
go build -o "$bin" ./cmd/coldship
results=$out/results.md
: >"$results"

log() { printf '%s\n' "$*" | tee -a "$results"; }

# measure NAME BYTES CMD... : runs CMD under /usr/bin/time, appends a row.
declare -A WALL
measure() {
	local name=$1 bytes=$2
	shift 2
	sync
	local tf
	tf=$(mktemp)
	if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >/dev/null 2>"$tf.err"; then
		echo "FAILED: $name: $(tail -3 "$tf.err")" | tee -a "$results"
		return 0
	fi
	read -r wall user sys rss <"$tf"
	WALL[$name]=$wall
	local mbs
	mbs=$(awk -v b="$bytes" -v w="$wall" 'BEGIN { printf "%.0f", (w > 0 ? b / w / 1e6 : 0) }')
	printf '| %-34s | %8.2f | %7s | %7.2f | %7.0f |\n' "$name" "$wall" "$mbs" "$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')" \
		"$(awk -v k="$rss" 'BEGIN{print k/1024}')" | tee -a "$results"
	rm -f "$tf" "$tf.err"
}
header() {
	log ""
	log "### $*"
	log ""
	log "| run                                | wall s   | MB/s    | CPU s   | RSS MiB |"
	log "|------------------------------------|----------|---------|---------|---------|"
}
# bench_target DESC A B OP LIMIT : checks WALL[A]/WALL[B] OP LIMIT (OP is <= or >=).
bench_target() {
	awk -v d="$1" -v a="${WALL[$2]:-0}" -v b="${WALL[$3]:-0}" -v op="$4" -v lim="$5" 'BEGIN {
		if (a <= 0 || b <= 0) { printf "  %-58s not measured: TARGET NOT CHECKED\n", d ":"; exit }
		r = a / b; ok = (op == "<=") ? (r <= lim) : (r >= lim)
		printf "  %-58s %6.2fx (target %s %sx): %s\n", d ":", r, (op == "<=" ? "<=" : ">="), lim, (ok ? "met" : "NOT MET")
	}' | tee -a "$results"
}

bench_free_port() { # a loopback port nothing listens on
	local p i
	for i in $(seq 1 500); do
		p=$((20000 + RANDOM % 12000)) # below Linux's ephemeral ports (32768-)
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	echo "no free loopback port" >&2
	return 1
}

bench_wait_port() { # PORT PID LOG : waits until PORT accepts, while PID lives
	local i
	for i in $(seq 1 150); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
			return 0
		fi
		if ! kill -0 "$2" 2>/dev/null; then
			echo "server exited during start:" >&2
			tail -5 "$3" >&2
			return 1
		fi
		sleep 0.1
	done
	echo "no server on 127.0.0.1:$1 after 15 s" >&2
	return 1
}

ratio() { # A B : prints A/B of wall times
	awk -v a="${WALL[$1]:-0}" -v b="${WALL[$2]:-0}" -v n1="$1" -v n2="$2" \
		'BEGIN { if (b > 0) printf "  %-40s %.2fx\n", n1 " / " n2 ":", a / b }' | tee -a "$results"
}

"$bin" keygen -o "$work/id.txt" >"$work/recipient" 2>/dev/null || "$bin" keygen -o "$work/id2.txt" >/dev/null 2>&1 || true
[ -s "$work/recipient" ] || grep -o 'age1[0-9a-z]*' "$work/id.txt" | head -1 >"$work/recipient"
rcpt=$(cat "$work/recipient")
printf 'bench-passphrase-%s\n' "$RANDOM" >"$work/pass"

log "# coldship benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
log ""
log "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); coldship defaults (block 1 MiB, zstd, jobs = cores (receive: cores + 1), 4 streams; sftp: from the round trip); load average $(cut -d' ' -f1-3 /proc/loadavg) at the start."

for s in $sections; do
	[ "$s" != core ] || s=local # the local section's former name
	if [ -f "scripts/bench-$s.sh" ]; then
		# shellcheck source=/dev/null
		. "scripts/bench-$s.sh"
	fi
	# A section is section_NAME (or, for the older ones, NAME).
	if declare -F "section_$s" >/dev/null; then
		"section_$s"
	else
		"$s"
	fi
done
log ""
log "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
log "results in $results"
