# shellcheck shell=bash
# Sourced by scripts/bench.sh (BENCH_SECTIONS="... dr"), which then calls
# dr. Uses bench.sh's bin, work, rcpt, results, WALL and its helpers
# measure, header, ratio and log.
#
# Nightly disaster-recovery copies, against restic, in the same run: a
# random image of BENCH_DR_SIZE (default 2G) is sent in full with
# --base latest; then BENCH_DR_PCT percent (default 1) of its 1 MiB blocks,
# at random positions, are rewritten and it is sent again with --base
# latest (an incremental shipment). At the destination: a full receive of
# the first shipment, then receive --into of the second over it, a full
# receive of the second (following its base), and --into over a restore
# that was touched since (so it is read and hashed first). restic backup
# (Debian's restic, a local repository, RESTIC_PASSWORD_FILE) backs up the
# same image before and after the change. Bytes are what each stored at its
# destination (du of the shipment, growth of the repository).
# Targets: the incremental send ships at most 3% of the bytes of the full one
# in at most 35% of its time; receive --into takes at most 25% of the time of
# a full receive. A quick check:
#   BENCH_SECTIONS=dr BENCH_DR_SIZE=256M ./scripts/bench.sh

dr_size=${BENCH_DR_SIZE:-2G}
dr_pct=${BENCH_DR_PCT:-1}

# dr_run NAME BYTES OUTFILE CMD... : measure, keeping CMD's stdout (coldship's
# --json summary) and stderr in OUTFILE.out and OUTFILE.err.
dr_run() {
	local name=$1 bytes=$2 outf=$3
	shift 3
	measure "$name" "$bytes" bash -c 'o=$1; shift; exec "$@" >"$o.out" 2>"$o.err"' _ "$outf" "$@"
}

# dr_field FILE KEY: a number from the JSON summary in FILE.
dr_field() { grep -o "\"$2\":[0-9.e+]*" "$1" | tail -1 | cut -d: -f2 | awk '{ printf "%.0f", $1 }'; }

# dr_id FILE: the shipment id in the JSON summary in FILE.
dr_id() { grep '"type":"summary"' "$1" | grep -o '"shipment":"[^"]*"' | tail -1 | cut -d'"' -f4; }

# dr_check DESC VALUE LIMIT: prints VALUE against the target VALUE <= LIMIT.
dr_check() {
	awk -v d="$1" -v v="$2" -v lim="$3" 'BEGIN {
		if (v == "" || v <= 0) { printf "  %-52s not measured: TARGET NOT CHECKED\n", d ":"; exit }
		printf "  %-52s %6.2f%%  (target <= %g%%: %s)\n", d ":", 100 * v, 100 * lim, (v <= lim ? "met" : "NOT MET")
	}' | tee -a "$results"
}

dr() {
	local img=$work/dr.img dest=$work/dr-dest state=$work/dr-state repo=$work/dr-restic
	local out=$work/dr-out out2=$work/dr-out2 o=$work/dr-log
	rm -rf "$dest" "$state" "$repo" "$out" "$out2" "$o" && mkdir -p "$o"
	if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != "$(numfmt --from=iec "$dr_size")" ]; then
		head -c "$dr_size" /dev/urandom >"$img"
	fi
	local size nblocks nchg
	size=$(stat -c %s "$img")
	nblocks=$((size / 1048576))
	nchg=$(awk -v n="$nblocks" -v p="$dr_pct" 'BEGIN { c = int(n * p / 100 + 0.5); print (c < 1 ? 1 : c) }')
	export RESTIC_PASSWORD_FILE=$work/pass
	restic init --repo "$repo" -q >/dev/null
	cat "$img" >/dev/null

	header "DR copies: $dr_size random image, then $nchg of its $nblocks 1 MiB blocks rewritten at random ($dr_pct%)"
	dr_run "coldship send (full)" "$size" "$o/full" \
		"$bin" send "$img" --to "$dest" -r "$rcpt" --state-dir "$state" --base latest --json
	local full_id full_bytes
	full_id=$(dr_id "$o/full.out")
	full_bytes=$(du -sb "$dest/$full_id" | cut -f1)
	dr_run "restic backup (first)" "$size" "$o/restic1" restic backup --repo "$repo" --json "$img"
	local repo1
	repo1=$(du -sb "$repo" | cut -f1)
	dr_run "coldship receive (full)" "$size" "$o/recv" \
		"$bin" receive "$dest" "$full_id" --out "$out" -i "$work/id.txt" --json

	shuf -i "0-$((nblocks - 1))" -n "$nchg" | while read -r b; do
		dd if=/dev/urandom of="$img" bs=1M seek="$b" count=1 conv=notrunc status=none
	done
	cat "$img" >/dev/null

	dr_run "coldship send --base latest" "$size" "$o/incr" \
		"$bin" send "$img" --to "$dest" -r "$rcpt" --state-dir "$state" --base latest --json
	local incr_id incr_bytes
	incr_id=$(dr_id "$o/incr.out")
	incr_bytes=$(du -sb "$dest/$incr_id" | cut -f1)
	dr_run "restic backup (after the change)" "$size" "$o/restic2" restic backup --repo "$repo" --json "$img"
	local repo2
	repo2=$(du -sb "$repo" | cut -f1)
	dr_run "coldship receive --into" "$size" "$o/into" \
		"$bin" receive "$dest" "$incr_id" --into "$out" -i "$work/id.txt" --json
	cmp "$img" "$out/dr.img" && log "  image updated with --into identical"
	dr_run "coldship receive --out (incr.)" "$size" "$o/recv2" \
		"$bin" receive "$dest" "$incr_id" --out "$out2" -i "$work/id.txt" --json
	cmp "$img" "$out2/dr.img" && log "  incremental shipment restored in full identical"
	# A restore that changed since (a VM booted from it, here: touched)
	# is not trusted: --into reads and hashes it before updating it. (To
	# the full shipment, older than the one it holds: --allow-rollback.)
	touch "$out2/dr.img"
	dr_run "coldship receive --into (re-read)" "$size" "$o/into2" \
		"$bin" receive "$dest" "$full_id" --into "$out2" -i "$work/id.txt" --allow-rollback --json

	log ""
	log "| stored at the destination          | bytes         |"
	log "|------------------------------------|---------------|"
	printf '| %-34s | %13s |\n' "coldship full shipment" "$full_bytes" | tee -a "$results"
	printf '| %-34s | %13s |\n' "coldship incremental shipment" "$incr_bytes" | tee -a "$results"
	printf '| %-34s | %13s |\n' "restic repository, first backup" "$repo1" | tee -a "$results"
	printf '| %-34s | %13s |\n' "restic repository, growth" "$((repo2 - repo1))" | tee -a "$results"
	log ""
	log "  incremental send: $(dr_field "$o/incr.out" bytes_unchanged) bytes unchanged, $(dr_field "$o/incr.out" bytes_data) changed, $(dr_field "$o/incr.out" bytes_shipped) shipped"
	log "  receive --into: $(dr_field "$o/into.out" bytes_written) bytes written, $(dr_field "$o/into.out" bytes_fetched) fetched, $(dr_field "$o/into.out" bytes_read) read of the old image"
	log "  receive --into of a touched restore: $(dr_field "$o/into2.out" bytes_read) bytes read and hashed first, $(dr_field "$o/into2.out" bytes_written) written"
	dr_check "incremental / full send, bytes" "$(awk -v a="$incr_bytes" -v b="$full_bytes" 'BEGIN { if (b > 0) print a / b }')" 0.03
	dr_check "incremental / full send, time" "$(awk -v a="${WALL["coldship send --base latest"]:-0}" -v b="${WALL["coldship send (full)"]:-0}" 'BEGIN { if (b > 0) print a / b }')" 0.35
	dr_check "receive --into / full receive, time" "$(awk -v a="${WALL["coldship receive --into"]:-0}" -v b="${WALL["coldship receive (full)"]:-0}" 'BEGIN { if (b > 0) print a / b }')" 0.25
	ratio "coldship receive --into (re-read)" "coldship receive (full)"
	ratio "coldship send --base latest" "restic backup (after the change)"
	ratio "coldship send (full)" "restic backup (first)"
	awk -v a="$incr_bytes" -v b="$((repo2 - repo1))" 'BEGIN { if (b > 0) printf "  %-40s %.2fx\n", "incremental bytes / restic growth:", a / b }' | tee -a "$results"
	rm -rf "$dest" "$state" "$repo" "$out" "$out2"
}
