# shellcheck shell=bash disable=SC2154
# Sourced by scripts/bench.sh (BENCH_SECTIONS="... local"), which then calls
# section_local. Uses bench.sh's bin, rcpt, results and log.
#
# coldship against its local peers on tmpfs (BENCH_SHM, default /dev/shm),
# so that no disk hides the CPU, page cache warm for every tool alike
# (issue 16):
#
#   1. A random image of BENCH_LOCAL_SIZE (default 1G): cp, age -r,
#      openssl enc -aes-256-ctr and coldship send; age -d, openssl enc -d
#      and coldship receive, BENCH_PAIRS (default 5) rounds back to back.
#      Each tool's wall time, CPU seconds (user + system of its whole
#      process tree, GNU time), CPU seconds per GiB and peak RSS are the
#      medians of the rounds; each ratio is the median of the ratios of the
#      rounds (a round's tools ran within seconds of each other).
#   2. A sparse image of BENCH_LOCAL_SPARSE (default 16G) with 4 KiB of
#      random data at the start of every 64 KiB (1 GiB allocated: a thin
#      disk after years of scattered writes): coldship send and receive at
#      --block-size 64K (BENCH_SPARSE_RUNS, default 3, medians) and once at
#      the default 1 MiB, cp --sparse=always and rsync --sparse (once), and
#      the allocation of what each restored; CPU seconds per GiB of data
#      (the allocated 1 GiB), as the CPU target counts them.
#
# Targets (issue 16): send and receive <= 0.9 CPU s per GiB; send <= 1.3x
# cp's wall time and >= 1.6x faster than age -r; the sparse image sent in
# <= 3 s, received in <= 3 s and restored within 1.1 GB (and within 5% of
# the source's allocation). A quick check:
#   BENCH_SECTIONS=local BENCH_LOCAL_SIZE=256M BENCH_LOCAL_SPARSE=2G BENCH_PAIRS=2 ./scripts/bench.sh

local_size=${BENCH_LOCAL_SIZE:-1G}
local_sparse=${BENCH_LOCAL_SPARSE:-16G}
local_pairs=${BENCH_PAIRS:-5}
local_sparse_runs=${BENCH_SPARSE_RUNS:-3}
local_dir=${BENCH_SHM:-/dev/shm}/coldship-bench

declare -A LW LC LR # per tool: the rounds' wall s, CPU s and peak RSS KiB

# lrun NAME CMD... : runs CMD under GNU time and appends its wall time, CPU
# seconds and peak RSS to NAME's lists; a failure is reported and stops
# the section. CMD's standard output goes to $LRUN_OUT if set.
lrun() {
	local name=$1 tf wall user sys rss
	shift
	sync
	tf=$(mktemp)
	if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"${LRUN_OUT:-/dev/null}" 2>"$tf.err"; then
		log "FAILED: $name: $(tail -3 "$tf.err")"
		rm -f "$tf" "$tf.err"
		return 1
	fi
	read -r wall user sys rss <"$tf"
	rm -f "$tf" "$tf.err"
	LW[$name]+=" $wall"
	LC[$name]+=" $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')"
	LR[$name]+=" $rss"
}

# median VALUES... : the median of numbers.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# lrow NAME GIB : a table row of NAME's medians.
lrow() {
	# shellcheck disable=SC2086
	local w c r
	w=$(median ${LW[$1]:-0})
	c=$(median ${LC[$1]:-0})
	r=$(median ${LR[$1]:-0})
	awk -v n="$1" -v w="$w" -v c="$c" -v r="$r" -v g="$2" -v k="$(wc -w <<<"${LW[$1]:-}")" 'BEGIN {
		printf "| %-34s | %7.2f | %7.2f | %9.2f | %7.0f | %d |\n", n, w, c, c / g, r / 1024, k
	}' | tee -a "$results"
}

# lratio DESC A B [OP LIMIT] : the median over the rounds of A's wall time
# over B's (round i of A against round i of B), against a target if given.
lratio() {
	local desc=$1 a=$2 b=$3 op=${4:-} lim=${5:-}
	# shellcheck disable=SC2206
	local wa=(${LW[$a]:-}) wb=(${LW[$b]:-}) rs=() i
	for i in "${!wa[@]}"; do
		[ -n "${wb[$i]:-}" ] && rs+=("$(awk -v x="${wa[$i]}" -v y="${wb[$i]}" 'BEGIN { if (y > 0) printf "%.2f", x / y }')")
	done
	if [ ${#rs[@]} -eq 0 ]; then
		log "  $desc: not measured${op:+: TARGET NOT CHECKED}"
		return 0
	fi
	local m
	m=$(median "${rs[@]}")
	awk -v d="$desc" -v m="$m" -v all="${rs[*]}" -v op="$op" -v lim="$lim" 'BEGIN {
		t = ""
		if (op != "") t = sprintf(" (target %s %sx): %s", op, lim, ((op == "<=") ? (m <= lim) : (m >= lim)) ? "met" : "NOT MET")
		printf "  %-44s %5.2fx  [rounds: %s]%s\n", d ":", m, all, t
	}' | tee -a "$results"
}

# lcheck DESC VALUE OP LIMIT UNIT : VALUE against a target.
lcheck() {
	awk -v d="$1" -v v="$2" -v op="$3" -v lim="$4" -v u="$5" 'BEGIN {
		ok = (op == "<=") ? (v <= lim) : (v >= lim)
		printf "  %-44s %6.2f %s (target %s %s %s): %s\n", d ":", v, u, op, lim, u, ok ? "met" : "NOT MET"
	}' | tee -a "$results"
}

ltable() {
	log ""
	log "### $*"
	log ""
	log "| run                                | wall s  | CPU s   | CPU s/GiB | RSS MiB | runs |"
	log "|------------------------------------|---------|---------|-----------|---------|------|"
}

# local_sparse_image FILE SIZE : SIZE apparent, 4 KiB of random data at the
# start of every 64 KiB (perl, which every Debian has, writes the pages).
local_sparse_image() {
	[ -f "$1" ] && [ "$(stat -c %s "$1")" = "$(numfmt --from=iec "$2")" ] && return 0
	rm -f "$1"
	truncate -s "$2" "$1"
	perl -e 'my ($f, $n) = @ARGV; open(my $r, "<", "/dev/urandom") or die; open(my $o, "+<", $f) or die;
		for my $i (0 .. $n / 65536 - 1) { sysread($r, my $p, 4096) == 4096 or die; sysseek($o, $i * 65536, 0); syswrite($o, $p) == 4096 or die }' \
		"$1" "$(stat -c %s "$1")"
}

section_local() {
	mkdir -p "$local_dir"
	local d=$local_dir img size gib i
	img=$d/random.img
	if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != "$(numfmt --from=iec "$local_size")" ]; then
		head -c "$local_size" /dev/urandom >"$img"
	fi
	size=$(stat -c %s "$img")
	gib=$(awk -v s="$size" 'BEGIN { print s / 1073741824 }')
	cp "$work/id.txt" "$d/id.txt"
	cat "$img" >/dev/null
	LW=() LC=() LR=()
	for i in $(seq 1 "$local_pairs"); do
		rm -rf "$d/cp.img" "$d/dest" "$d/out" "$d"/img.age* "$d"/img.enc*
		lrun "cp" cp "$img" "$d/cp.img" || return 0
		lrun "age -r" age -r "$rcpt" -o "$d/img.age" "$img" || return 0
		lrun "openssl enc -aes-256-ctr" openssl enc -aes-256-ctr -pbkdf2 -pass "file:$work/pass" -in "$img" -out "$d/img.enc" || return 0
		lrun "coldship send" "$bin" send "$img" --to "$d/dest" -r "$rcpt" -q || return 0
		lrun "age -d" age -d -i "$d/id.txt" -o "$d/img.age.out" "$d/img.age" || return 0
		lrun "openssl enc -d" openssl enc -d -aes-256-ctr -pbkdf2 -pass "file:$work/pass" -in "$d/img.enc" -out "$d/img.enc.out" || return 0
		lrun "coldship receive" "$bin" receive "$d/dest" -i "$d/id.txt" --out "$d/out" -q || return 0
		cmp -s "$img" "$d/out/random.img" || log "  round $i: restored image DIFFERS"
	done
	ltable "Local, tmpfs: $local_size random image, medians of $local_pairs rounds"
	for t in "cp" "age -r" "openssl enc -aes-256-ctr" "coldship send" "age -d" "openssl enc -d" "coldship receive"; do
		lrow "$t" "$gib"
	done
	log ""
	lratio "coldship send / cp, wall" "coldship send" "cp" "<=" 1.3
	lratio "age -r / coldship send, wall" "age -r" "coldship send" ">=" 1.6
	lratio "openssl enc / coldship send, wall" "openssl enc -aes-256-ctr" "coldship send"
	lratio "age -d / coldship receive, wall" "age -d" "coldship receive"
	lratio "openssl enc -d / coldship receive, wall" "openssl enc -d" "coldship receive"
	# shellcheck disable=SC2086
	lcheck "coldship send, CPU s per GiB" "$(awk -v c="$(median ${LC["coldship send"]})" -v g="$gib" 'BEGIN { print c / g }')" "<=" 0.9 "s"
	# shellcheck disable=SC2086
	lcheck "coldship receive, CPU s per GiB" "$(awk -v c="$(median ${LC["coldship receive"]})" -v g="$gib" 'BEGIN { print c / g }')" "<=" 0.9 "s"
	rm -rf "$d/cp.img" "$d/dest" "$d/out" "$d"/img.age* "$d"/img.enc*

	local sp spsize alloc
	sp=$d/sparse.img
	local_sparse_image "$sp" "$local_sparse"
	spsize=$(stat -c %s "$sp")
	alloc=$(du -B1 "$sp" | cut -f1)
	cat "$sp" >/dev/null
	LW=() LC=() LR=()
	for i in $(seq 1 "$local_sparse_runs"); do
		rm -rf "$d/sdest" "$d/sout" "$d/scp"
		mkdir -p "$d/scp"
		lrun "coldship send, 64 KiB blocks" "$bin" send "$sp" --block-size 64K --to "$d/sdest" -r "$rcpt" -q || return 0
		lrun "coldship receive, 64 KiB blocks" "$bin" receive "$d/sdest" -i "$d/id.txt" --out "$d/sout" -q || return 0
		lrun "cp --sparse=always" cp --sparse=always "$sp" "$d/scp/" || return 0
	done
	local restored same=identical
	restored=$(du -B1 "$d/sout/sparse.img" | cut -f1)
	cmp -s "$sp" "$d/sout/sparse.img" || same=DIFFERS
	rm -rf "$d/sdest" "$d/sout" "$d/scp"
	lrun "coldship send, 1 MiB blocks" "$bin" send "$sp" --to "$d/sdest" -r "$rcpt" -q || return 0
	lrun "coldship receive, 1 MiB blocks" "$bin" receive "$d/sdest" -i "$d/id.txt" --out "$d/sout" -q || return 0
	local restored1m
	restored1m=$(du -B1 "$d/sout/sparse.img" | cut -f1)
	rm -rf "$d/sdest" "$d/sout"
	mkdir -p "$d/rs"
	lrun "rsync --sparse" rsync --sparse "$sp" "$d/rs/" || return 0
	local rsalloc
	rsalloc=$(du -B1 "$d/rs/sparse.img" | cut -f1)
	rm -rf "$d/rs"
	# CPU s per GiB of data (what is allocated), as the CPU target counts it.
	ltable "Local, tmpfs: $local_sparse sparse image, 4 KiB of data every 64 KiB ($(numfmt --to=iec "$alloc") allocated; CPU s per GiB of data)"
	for t in "coldship send, 64 KiB blocks" "coldship receive, 64 KiB blocks" "cp --sparse=always" \
		"coldship send, 1 MiB blocks" "coldship receive, 1 MiB blocks" "rsync --sparse"; do
		lrow "$t" "$(awk -v a="$alloc" 'BEGIN { print a / 1073741824 }')"
	done
	log ""
	log "  restored sparse image (64 KiB blocks, last round) $same (cmp)"
	log "  allocated: source $alloc B; restored $restored B (64 KiB blocks), $restored1m B (1 MiB blocks); rsync --sparse $rsalloc B"
	local nb
	nb=$((spsize / 65536))
	# The 3 s targets are the 16 GiB image's: a smaller one is not checked.
	if [ "$spsize" = $((16 << 30)) ]; then
		# shellcheck disable=SC2086
		lcheck "send, 64 KiB blocks" "$(median ${LW["coldship send, 64 KiB blocks"]})" "<=" 3 "s"
		# shellcheck disable=SC2086
		lcheck "receive, 64 KiB blocks" "$(median ${LW["coldship receive, 64 KiB blocks"]})" "<=" 3 "s"
	fi
	# shellcheck disable=SC2086
	log "  per block ($nb blocks): send $(awk -v w="$(median ${LW["coldship send, 64 KiB blocks"]})" -v c="$(median ${LC["coldship send, 64 KiB blocks"]})" -v n="$nb" 'BEGIN { printf "%.1f us wall, %.1f us CPU", w / n * 1e6, c / n * 1e6 }'), receive $(awk -v w="$(median ${LW["coldship receive, 64 KiB blocks"]})" -v c="$(median ${LC["coldship receive, 64 KiB blocks"]})" -v n="$nb" 'BEGIN { printf "%.1f us wall, %.1f us CPU", w / n * 1e6, c / n * 1e6 }')"
	lratio "send, 64 KiB blocks / cp --sparse=always" "coldship send, 64 KiB blocks" "cp --sparse=always"
	if [ "$spsize" = $((16 << 30)) ]; then
		lcheck "restored allocation (64 KiB blocks)" "$(awk -v r="$restored" 'BEGIN { print r / 1e9 }')" "<=" 1.1 "GB"
	fi
	lcheck "restored / source allocation" "$(awk -v r="$restored" -v s="$alloc" 'BEGIN { print r / s }')" "<=" 1.05 "x"
}

# The section's former name.
section_core() { section_local; }
