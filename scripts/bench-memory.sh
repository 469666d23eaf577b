# shellcheck shell=bash disable=SC2154
# Sourced by scripts/bench.sh (BENCH_SECTIONS="... memory"), which then
# calls section_memory. Uses bench.sh's bin, work, rcpt, results and log,
# and bench-local.sh's lrun, lrow, ltable, lcheck and median (sourced here).
#
# Memory flat in the image's size (issue 16): an image of
# BENCH_MEMORY_BLOCKS (default 2,000,000) blocks of 64 KiB (122 GiB
# apparent) with a 4 KiB page of data at the start of every block (an
# 8-byte counter, the rest zero: 7.6 GiB allocated), in BENCH_MEMORY_DIR
# (default bench/work/memory, on disk). On tmpfs (e.g.
# BENCH_MEMORY_DIR=/dev/shm/coldship-memory) the image and its restore
# would take 15.2 GiB of memory: the source is then moved to bench/work
# for the receives (and back at the end), or the kernel's reclaim is what
# they would measure (the 2 million block receive took 39-64 s on this
# 24 GiB machine with the source beside it, 12-22 s without). Measured,
# each once: the full send (--base latest, so that DR state is kept), an incremental send after one
# block changed, receive --out of the full shipment, receive --into of the
# incremental one over that restore, and verify of the incremental one.
# Each row gives the peak RSS and CPU seconds per GiB of data; the time
# per block follows the table. The restored image is compared with the
# source over their data extents only (cmp would read 122 GiB of holes
# twice: ten minutes here).
#
# Targets: peak RSS <= 256 MiB for each; send and receive <= 15 us per
# block, so that 2 million mostly-empty blocks take under a minute. A
# quick check:
#   BENCH_SECTIONS=memory BENCH_MEMORY_BLOCKS=100000 ./scripts/bench.sh

memory_blocks=${BENCH_MEMORY_BLOCKS:-2000000}
memory_dir=${BENCH_MEMORY_DIR:-$work/memory}

# shellcheck source=scripts/bench-local.sh
declare -F lrun >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/bench-local.sh"

# memory_same A B : whether A and B hold the same bytes, reading only
# the data extents of either (SEEK_DATA is 3, SEEK_HOLE 4): outside them
# both read as zeros.
memory_same() {
	perl -e 'my ($pa, $pb) = @ARGV; open(my $fa, "<", $pa) or die "$pa: $!"; open(my $fb, "<", $pb) or die "$pb: $!";
		my $size = -s $fa; exit 1 if $size != -s $fb;
		for (my $pos = 0; $pos < $size;) {
			my ($da, $db) = (sysseek($fa, $pos, 3) // $size, sysseek($fb, $pos, 3) // $size);
			my $d = $da < $db ? $da : $db;
			last if $d >= $size;
			my ($ha, $hb) = (sysseek($fa, $d, 4), sysseek($fb, $d, 4));
			my $e = $ha > $hb ? $ha : $hb;
			sysseek($fa, $d, 0); sysseek($fb, $d, 0);
			for (my $o = $d; $o < $e; $o += 1 << 20) {
				my $n = $e - $o < 1 << 20 ? $e - $o : 1 << 20;
				sysread($fa, my $x, $n) == $n && sysread($fb, my $y, $n) == $n or die "read: $!";
				exit 1 if $x ne $y;
			}
			$pos = $e;
		}' "$1" "$2"
}

# memory_fstype DIR : the type of the file system DIR is on (ext4, tmpfs).
memory_fstype() {
	local t
	t=$(findmnt -no FSTYPE -T "$1" 2>/dev/null | head -1)
	echo "${t:-$(stat -f -c %T "$1")}"
}

# memory_warm FILE : reads FILE's data extents into the page cache, and
# only them. `cat` read the holes too: 122 GiB of zero pages on ext4,
# which evicted the data pages, so that the send that followed read every
# page from the disk (134.7 s for 2 million blocks, 22.0 s warmed so).
memory_warm() {
	perl -e 'my ($p) = @ARGV; open(my $f, "<", $p) or die "$p: $!"; my $size = -s $f;
		for (my $pos = 0; $pos < $size;) {
			my $d = sysseek($f, $pos, 3); last unless defined $d;
			my $h = sysseek($f, $d, 4); sysseek($f, $d, 0);
			for (my $o = $d; $o < $h; $o += 1 << 20) {
				my $n = $h - $o < 1 << 20 ? $h - $o : 1 << 20;
				sysread($f, my $x, $n) == $n or die "read: $!";
			}
			$pos = $h;
		}' "$1"
}

# memory_image FILE N : N blocks of 64 KiB, a page of data at the start of each.
memory_image() {
	[ -f "$1" ] && [ "$(stat -c %s "$1")" = "$(($2 * 65536))" ] && return 0
	rm -f "$1"
	truncate -s $(($2 * 65536)) "$1"
	perl -e 'my ($f, $n) = @ARGV; open(my $o, "+<", $f) or die;
		for my $i (0 .. $n - 1) { sysseek($o, $i * 65536, 0); syswrite($o, pack("Q>", $i + 1) . ("\0" x 4088)) == 4096 or die }' \
		"$1" "$2"
}

section_memory() {
	local d=$memory_dir n=$memory_blocks img
	mkdir -p "$d"
	img=$d/disk.img
	rm -rf "$d/dest" "$d/state" "$d/out"
	log ""
	log "(memory: writing an image of $n blocks in $d)"
	memory_image "$img" "$n"
	memory_warm "$img"
	LW=() LC=() LR=()
	local args=(--to "$d/dest" -r "$rcpt" --block-size 64K --state-dir "$d/state" --base latest -q)
	LRUN_OUT=$d/full.id lrun "send (full)" "$bin" send "$img" "${args[@]}" || return 0
	local full incr
	full=$(cat "$d/full.id")
	# One block changed, as a day's writes would.
	printf 'changed' | dd of="$img" bs=1 seek=$(((n / 2) * 65536 + 100)) conv=notrunc status=none
	LRUN_OUT=$d/incr.id lrun "send --base latest (incremental)" "$bin" send "$img" "${args[@]}" || return 0
	incr=$(cat "$d/incr.id")
	# On tmpfs the source and its restore would hold 15.2 GiB of memory
	# together: the source waits on disk during the receives, so that
	# they measure coldship and not the kernel's reclaim.
	local parked=
	if [ "$(memory_fstype "$d")" = tmpfs ]; then
		parked=$work/memory-source.img
		cp --sparse=always "$img" "$parked" && rm -f "$img" && img=$parked
	fi
	lrun "receive --out (full)" "$bin" receive "$d/dest" "$full" -i "$work/id.txt" --out "$d/out" -q || { memory_unpark "$parked" "$d/disk.img"; return 0; }
	lrun "receive --into (incremental)" "$bin" receive "$d/dest" "$incr" -i "$work/id.txt" --into "$d/out" -q || { memory_unpark "$parked" "$d/disk.img"; return 0; }
	lrun "verify (incremental)" "$bin" verify "$d/dest" "$incr" -i "$work/id.txt" -q || { memory_unpark "$parked" "$d/disk.img"; return 0; }
	local same=identical
	memory_same "$img" "$d/out/disk.img" || same=DIFFERS
	ltable "Memory: $n blocks of 64 KiB ($(numfmt --to=iec --round=nearest $((n * 65536))) apparent, a 4 KiB page of data in each: $(numfmt --to=iec --round=nearest $((n * 4096))); CPU s per GiB of data), on $(memory_fstype "$d")"
	local t gib
	gib=$(awk -v n="$n" 'BEGIN { print n * 4096 / 1073741824 }')
	for t in "send (full)" "send --base latest (incremental)" "receive --out (full)" "receive --into (incremental)" "verify (incremental)"; do
		lrow "$t" "$gib"
	done
	log ""
	log "  restored image (receive --out, then --into) $same (data extents compared)"
	for t in "send (full)" "send --base latest (incremental)" "receive --out (full)" "receive --into (incremental)" "verify (incremental)"; do
		# shellcheck disable=SC2086
		lcheck "$t, peak RSS" "$(awk -v r="$(median ${LR[$t]:-0})" 'BEGIN { print r / 1024 }')" "<=" 256 "MiB"
	done
	for t in "send (full)" "receive --out (full)"; do
		# shellcheck disable=SC2086
		lcheck "$t, wall per block" "$(awk -v w="$(median ${LW[$t]:-0})" -v n="$n" 'BEGIN { print w / n * 1e6 }')" "<=" 15 "us"
		# shellcheck disable=SC2086
		log "    (CPU per block: $(awk -v c="$(median ${LC[$t]:-0})" -v n="$n" 'BEGIN { printf "%.1f", c / n * 1e6 }') us)"
	done
	rm -rf "$d/dest" "$d/state" "$d/out" "$d"/*.id
	memory_unpark "$parked" "$d/disk.img"
}

# memory_unpark PARKED IMG : moves the source parked on disk back to IMG
# (nothing when PARKED is empty), so that the next run finds it.
memory_unpark() {
	[ -n "$1" ] || return 0
	cp --sparse=always "$1" "$2" && rm -f "$1"
}
