#!/usr/bin/env bash
# make bench: coldship against its peers, same data, same run.
# Prints wall time, MB/s, CPU seconds, peak RSS and ratios, and writes
# bench/out/results.md. Sizes: BENCH_DENSE (default 2G random image),
# BENCH_SPARSE (16G sparse image) with BENCH_SPARSE_DATA (1G) of data.
# Page cache is warm for every tool alike (the image is read once first).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="$PATH:$(go env GOPATH)/bin"
bin=$root/bin/coldship
work=${BENCH_DIR:-$root/bench/work}
out=$root/bench/out
dense=${BENCH_DENSE:-2G}
sparse=${BENCH_SPARSE:-16G}
sparse_data_mib=${BENCH_SPARSE_DATA_MIB:-1024}
sections=${BENCH_SECTIONS:-core sftp s3 dr live}
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
log "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); coldship defaults (block 1 MiB, zstd, jobs = cores, 4 streams; sftp: from the round trip)."

make_images() {
	if [ ! -f "$work/dense.img" ] || [ "$(stat -c %s "$work/dense.img")" != "$(numfmt --from=iec "$dense")" ]; then
		head -c "$dense" /dev/urandom >"$work/dense.img"
	fi
	if [ ! -f "$work/sparse.img" ]; then
		truncate -s "$sparse" "$work/sparse.img"
		local n=$((sparse_data_mib / 64)) step
		step=$(($(numfmt --from=iec "$sparse") / 1048576 / n))
		for i in $(seq 0 $((n - 1))); do
			head -c 64M /dev/urandom | dd of="$work/sparse.img" bs=1M seek=$((i * step)) conv=notrunc status=none
		done
	fi
	if [ ! -f "$work/dense1g.img" ]; then
		head -c 1G "$work/dense.img" >"$work/dense1g.img"
	fi
	cat "$work/dense.img" "$work/dense1g.img" >/dev/null
}

core() {
	make_images
	local size sz1
	size=$(stat -c %s "$work/dense.img")
	sz1=$(stat -c %s "$work/dense1g.img")
	header "Local destination: $dense random image (send)"
	rm -rf "$work/cp" "$work/dest" && mkdir -p "$work/cp"
	measure "cp" "$size" cp "$work/dense.img" "$work/cp/"
	rm -f "$work/cp/dense.img"
	# coldship syncs every object it writes: the durable floor is cp + sync.
	measure "cp + sync" "$size" sh -c 'cp "$1" "$2" && sync "$2/dense.img"' sh "$work/dense.img" "$work/cp"
	measure "coldship send" "$size" "$bin" send "$work/dense.img" --to "$work/dest" -r "$rcpt" -q
	measure "age -r" "$size" age -r "$rcpt" -o "$work/dense.age" "$work/dense.img"
	rm -f "$work/dense.age"
	measure "age -r + sync" "$size" sh -c 'age -r "$1" -o "$2" "$3" && sync "$2"' sh "$rcpt" "$work/dense.age" "$work/dense.img"
	measure "openssl enc -aes-256-ctr" "$size" openssl enc -aes-256-ctr -pbkdf2 -pass "file:$work/pass" -in "$work/dense.img" -out "$work/dense.enc"
	ratio "coldship send" "cp"
	ratio "coldship send" "cp + sync"
	ratio "age -r" "coldship send"
	ratio "age -r + sync" "coldship send"
	ratio "openssl enc -aes-256-ctr" "coldship send"

	header "Local destination: $dense random image (receive)"
	rm -rf "$work/recv" "$work/cp2"
	measure "cp (back)" "$size" cp "$work/cp/dense.img" "$work/cp2"
	measure "coldship receive" "$size" "$bin" receive "$work/dest" -i "$work/id.txt" --out "$work/recv" -q
	measure "age -d" "$size" age -d -i "$work/id.txt" -o "$work/dense.age.out" "$work/dense.age"
	measure "openssl enc -d -aes-256-ctr" "$size" openssl enc -d -aes-256-ctr -pbkdf2 -pass "file:$work/pass" -in "$work/dense.enc" -out "$work/dense.enc.out"
	cmp "$work/dense.img" "$work/recv/dense.img" && log "  restored image identical"
	ratio "coldship receive" "cp (back)"
	ratio "age -d" "coldship receive"
	ratio "openssl enc -d -aes-256-ctr" "coldship receive"
	rm -rf "$work/cp" "$work/cp2" "$work/dest" "$work/recv" "$work"/dense.age* "$work"/dense.enc*

	header "Sparse: $sparse image holding $((sparse_data_mib / 1024)) GiB of data vs a dense 1 GiB image"
	rm -rf "$work/dest1" "$work/dests" "$work/cps" && mkdir -p "$work/cps"
	measure "coldship send dense 1G" "$sz1" "$bin" send "$work/dense1g.img" --to "$work/dest1" -r "$rcpt" -q
	measure "coldship send sparse" "$(stat -c %s "$work/sparse.img")" "$bin" send "$work/sparse.img" --to "$work/dests" -r "$rcpt" -q
	measure "cp sparse" "$(stat -c %s "$work/sparse.img")" cp "$work/sparse.img" "$work/cps/"
	measure "coldship receive sparse" "$(stat -c %s "$work/sparse.img")" "$bin" receive "$work/dests" -i "$work/id.txt" --out "$work/recvs" -q
	ratio "coldship send sparse" "coldship send dense 1G"
	log "  allocated: source $(du -sh "$work/sparse.img" | cut -f1), restored $(du -sh "$work/recvs/sparse.img" | cut -f1), shipment $(du -sh "$work/dests" | cut -f1)"
	cmp "$work/sparse.img" "$work/recvs/sparse.img" && log "  restored sparse image identical"
	rm -rf "$work/dest1" "$work/dests" "$work/cps" "$work/recvs"
}

for s in $sections; do
	if [ -x "scripts/bench-$s.sh" ]; then
		# shellcheck source=/dev/null
		. "scripts/bench-$s.sh"
	fi
	"$s"
done
log ""
log "results in $results"
