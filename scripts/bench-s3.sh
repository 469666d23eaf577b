# shellcheck shell=bash disable=SC2154
# Sourced by scripts/bench.sh (BENCH_SECTIONS="... s3"), which then calls s3.
# Uses bench.sh's bin, work, rcpt, results, WALL and its helpers measure,
# header, ratio, log, bench_target and bench_free_port/bench_wait_port.
#
# coldship send and receive over S3 against rclone copy to and from an rclone
# crypt remote, both on the same local Versity S3 Gateway (versitygw, posix
# backend, a free loopback port), the same random image in the same run; then
# the same through toxiproxy adding half the round trip each way
# (BENCH_S3_RTT_MS, default 100 ms), and a table of each tool's time at that
# round trip against its time on loopback, with CPU seconds per GiB. The
# proxy itself costs CPU (about as much as versitygw per GiB moved, on the
# same cores), so coldship also runs through toxiproxy without latency: the
# ratio to that run is what the round trip alone costs.
# Every measurement runs twice; the row shows the best (the machine is
# shared), and the RSS target is checked against the larger of the two runs.
#
# Size: BENCH_S3_SIZE (default 1G). A quick check:
#   BENCH_SECTIONS=s3 BENCH_S3_SIZE=256M ./scripts/bench.sh

s3_size=${BENCH_S3_SIZE:-1G}
s3_rtt_ms=${BENCH_S3_RTT_MS:-100}
s3_dir=$work/s3
s3_bucket=coldship-bench
s3_pids=()
declare -gA S3_RSS=() S3_CPU=()

# s3_best PREP NAME BYTES CMD... : like measure, but runs CMD twice (PREP, a
# command without arguments, before each run, untimed) and prints the row of
# the faster run; WALL[NAME] is its wall time, S3_RSS[NAME] the larger peak
# RSS (MiB) of the two runs. A failed run is reported.
s3_best() {
	local prep=$1 name=$2 bytes=$3 saved=$results tf line best_line="" best_w="" rss i
	shift 3
	tf=$(mktemp)
	rm -f "$tf.int"
	S3_RSS[$name]=0
	for i in 1 2; do
		"$prep"
		unset "WALL[$name]"
		results=/dev/null
		# measure's /usr/bin/time waits out a Ctrl-C, and bash then takes
		# the command's exit for its own handling of it: this wrapper notes
		# an exit by a signal, and the bench stops (the EXIT trap tears down).
		measure "$name" "$bytes" bash -c 'f=$1; shift; trap ": >\"\$f\"" INT TERM; "$@"; rc=$?; [ "$rc" -lt 128 ] || : >"$f"; exit "$rc"' \
			_ "$tf.int" "$@" >"$tf"
		results=$saved
		if [ -e "$tf.int" ]; then
			rm -f "$tf" "$tf.int"
			log "INTERRUPTED: $name (run $i): stopping"
			exit 130
		fi
		line=$(cat "$tf")
		if [ -z "${WALL[$name]:-}" ]; then
			log "$line (run $i)"
			continue
		fi
		rss=$(awk -F'|' '{ gsub(/ /, "", $6); print $6 }' <<<"$line")
		if [ "$rss" -gt "${S3_RSS[$name]}" ]; then
			S3_RSS[$name]=$rss
		fi
		if [ -z "$best_w" ] || awk -v a="${WALL[$name]}" -v b="$best_w" 'BEGIN { exit !(a < b) }'; then
			best_w=${WALL[$name]} best_line=$line
			S3_CPU[$name]=$(awk -F'|' '{ gsub(/ /, "", $5); print $5 }' <<<"$line")
		fi
	done
	rm -f "$tf"
	if [ -n "$best_w" ]; then
		WALL[$name]=$best_w
		log "$best_line"
	fi
}

# s3_wan_row NAME BYTES : one row of the round-trip table: NAME on loopback,
# through the proxy without latency (if measured) and @RTT: wall, the
# ratios of @RTT to the others, CPU seconds per GiB and peak RSS.
s3_wan_row() {
	local far="$1 @${s3_rtt_ms}ms" prox="$1 @proxy"
	awk -v n="$1" -v b="$2" -v w1="${WALL[$1]:-0}" -v w0="${WALL[$prox]:-0}" -v w2="${WALL[$far]:-0}" \
		-v c1="${S3_CPU[$1]:-0}" -v c2="${S3_CPU[$far]:-0}" -v r1="${S3_RSS[$1]:-0}" -v r2="${S3_RSS[$far]:-0}" 'BEGIN {
		g = b / 1073741824
		if (w1 <= 0 || w2 <= 0) { printf "| %-27s | not measured |\n", n; exit }
		p = (w0 > 0) ? sprintf("%6.2f", w0) : "     -"; q = (w0 > 0) ? sprintf("%5.2fx", w2 / w0) : "     -"
		printf "| %-27s | %6.2f | %s | %6.2f | %5.2fx | %s | %5.2f | %5.2f | %4d | %4d |\n", n, w1, p, w2, w2 / w1, q, c1 / g, c2 / g, r1, r2
	}' | tee -a "$results"
}

# s3_coldship_runs TAG ENDPOINT IMG BYTES : coldship's send and receive
# alone through ENDPOINT, one table.
s3_coldship_runs() {
	local tag=$1 ep=$2 img=$3 size=$4
	header "S3 (versitygw through toxiproxy without latency): $s3_size random image (best of 2 runs)"
	s3_best s3_clear_coldship "coldship send (s3)$tag" "$size" \
		"$bin" send "$img" --to "s3://$s3_bucket/coldship" --s3-endpoint "$ep" -r "$rcpt" -q --no-resume --state-dir "$s3_dir/state"
	s3_best s3_clear_recv "coldship receive (s3)$tag" "$size" \
		"$bin" receive "s3://$s3_bucket/coldship" --s3-endpoint "$ep" -i "$work/id.txt" --out "$s3_dir/recv" -q
}

s3_rss_target() { # NAME LIMIT_MIB
	local r=${S3_RSS[$1]:-0}
	if [ -z "${WALL[$1]:-}" ] || [ "$r" = 0 ]; then
		log "$(printf '  %-58s not measured: TARGET NOT CHECKED' "peak RSS of $1:")"
	elif [ "$r" -le "$2" ]; then
		log "$(printf '  %-58s %4s MiB (target <= %s MiB): met' "peak RSS of $1:" "$r" "$2")"
	else
		log "$(printf '  %-58s %4s MiB (target <= %s MiB): NOT MET' "peak RSS of $1:" "$r" "$2")"
	fi
}

s3_versitygw_bin() {
	local gobin
	if command -v versitygw >/dev/null; then
		command -v versitygw
		return 0
	fi
	gobin=$(go env GOBIN 2>/dev/null || true)
	[ -n "$gobin" ] || gobin="$(go env GOPATH 2>/dev/null)/bin"
	[ -x "$gobin/versitygw" ] && echo "$gobin/versitygw"
}

s3_cleanup() {
	local p
	for p in "${s3_pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	s3_pids=()
	unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ENDPOINT_URL AWS_EC2_METADATA_DISABLED
	rm -rf "$s3_dir/gw" "$s3_dir/recv" "$s3_dir/rback" "$s3_dir/state" "$s3_dir/rclone.conf" "$s3_dir/home"
}

# Before each timed run: no earlier upload or download to find.
s3_clear_coldship() { rm -rf "${s3_dir:?}/gw/$s3_bucket/coldship"; }
s3_clear_rclone() { rm -rf "${s3_dir:?}/gw/$s3_bucket/rclone"; }
s3_clear_recv() { rm -rf "$s3_dir/recv"; }
s3_clear_rback() { rm -rf "$s3_dir/rback"; }

s3_random_image() { # SIZE : prints the path of a random image of SIZE, made once
	local f=$work/random-$1.img
	if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" != "$(numfmt --from=iec "$1")" ]; then
		head -c "$1" /dev/urandom >"$f.tmp"
		mv "$f.tmp" "$f"
	fi
	echo "$f"
}

# s3_runs TAG ENDPOINT CRYPT IMG BYTES : the send and receive tables of
# coldship and rclone through ENDPOINT (rclone through its remote CRYPT);
# TAG ends every row's name ("" on loopback). Uses s3_section's rcl.
s3_runs() {
	local tag=$1 ep=$2 crypt=$3 img=$4 size=$5 where="on loopback"
	[ -z "$tag" ] || where="at ${tag#* @} RTT"
	header "S3 (versitygw $where): $s3_size random image, send (best of 2 runs)"
	s3_best s3_clear_coldship "coldship send (s3)$tag" "$size" \
		"$bin" send "$img" --to "s3://$s3_bucket/coldship" --s3-endpoint "$ep" -r "$rcpt" -q --no-resume --state-dir "$s3_dir/state"
	s3_best s3_clear_rclone "rclone copy to crypt (s3)$tag" "$size" \
		"${rcl[@]}" copy "$img" "$crypt:"
	bench_target "coldship / rclone crypt throughput, send$tag" "rclone copy to crypt (s3)$tag" "coldship send (s3)$tag" ">=" 1.5
	s3_rss_target "coldship send (s3)$tag" 256

	header "S3 (versitygw $where): $s3_size random image, receive (best of 2 runs)"
	s3_best s3_clear_recv "coldship receive (s3)$tag" "$size" \
		"$bin" receive "s3://$s3_bucket/coldship" --s3-endpoint "$ep" -i "$work/id.txt" --out "$s3_dir/recv" -q
	s3_best s3_clear_rback "rclone copy from crypt (s3)$tag" "$size" \
		"${rcl[@]}" copy "$crypt:$(basename "$img")" "$s3_dir/rback"
	bench_target "coldship / rclone crypt throughput, receive$tag" "rclone copy from crypt (s3)$tag" "coldship receive (s3)$tag" ">=" 1.5
	s3_rss_target "coldship receive (s3)$tag" 256
	if cmp -s "$img" "$s3_dir/recv/$(basename "$img")"; then
		log "  coldship: restored image identical"
	else
		log "  coldship: restored image DIFFERS or missing"
	fi
	if cmp -s "$img" "$s3_dir/rback/$(basename "$img")"; then
		log "  rclone: restored image identical"
	else
		log "  rclone: restored image DIFFERS or missing"
	fi
}

# s3: the section, in a subshell: its exports (the AWS_* variables) and traps
# end with it.
s3() { (s3_section); }

s3_section() {
	local gw port img size i
	if ! gw=$(s3_versitygw_bin); then
		log ""
		log "SKIPPED: S3: versitygw not installed (scripts/install-test-deps.sh)"
		return 0
	fi
	mkdir -p "$s3_dir"
	s3_cleanup
	trap 's3_cleanup' EXIT
	trap 's3_cleanup; echo "s3: interrupted" >&2; exit 130' INT TERM

	# versitygw, posix backend, a free loopback port; its root credentials
	# from the environment it documents, so that no process argument holds them.
	export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
	AWS_ACCESS_KEY_ID=bench$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
	AWS_SECRET_ACCESS_KEY=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
	mkdir -p "$s3_dir/gw"
	port=$(bench_free_port)
	export AWS_ENDPOINT_URL=http://127.0.0.1:$port
	# In a session of its own (setsid): a Ctrl-C then reaches only the tool
	# being measured, and the EXIT trap ends the server.
	ROOT_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID ROOT_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
		setsid "$gw" --port "127.0.0.1:$port" --region us-east-1 --quiet posix "$s3_dir/gw" >"$s3_dir/versitygw.log" 2>&1 &
	s3_pids+=("$!")
	for i in $(seq 1 150); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			break
		fi
		if ! kill -0 "${s3_pids[0]}" 2>/dev/null || [ "$i" = 150 ]; then
			echo "versitygw did not start on 127.0.0.1:$port:" >&2
			tail -5 "$s3_dir/versitygw.log" >&2
			return 1
		fi
		sleep 0.1
	done

	# toxiproxy on loopback: a proxy to versitygw with latency both ways.
	local tsrv tcli tport pport="" p0port="" far=""
	if tsrv=$(command -v toxiproxy-server) && tcli=$(command -v toxiproxy-cli); then
		tport=$(bench_free_port)
		setsid "$tsrv" -host 127.0.0.1 -port "$tport" >"$s3_dir/toxiproxy.log" 2>&1 &
		s3_pids+=("$!")
		bench_wait_port "$tport" "$!" "$s3_dir/toxiproxy.log"
		pport=$(bench_free_port)
		{
			"$tcli" -h "http://127.0.0.1:$tport" create -l "127.0.0.1:$pport" -u "127.0.0.1:$port" versitygw
			"$tcli" -h "http://127.0.0.1:$tport" toxic add -t latency -n lat_down -d \
				-a latency=$((s3_rtt_ms / 2)) -a jitter=0 versitygw
			"$tcli" -h "http://127.0.0.1:$tport" toxic add -t latency -n lat_up -u \
				-a latency=$((s3_rtt_ms / 2)) -a jitter=0 versitygw
			p0port=$(bench_free_port)
			"$tcli" -h "http://127.0.0.1:$tport" create -l "127.0.0.1:$p0port" -u "127.0.0.1:$port" versitygw0
		} >>"$s3_dir/toxiproxy.log"
		far=" @${s3_rtt_ms}ms"
	fi

	# rclone: an s3 remote on the same server (and one through the proxy),
	# a crypt remote over each with the same keys.
	local pass1 pass2 r ep
	pass1=$(head -c 24 /dev/urandom | base64 | rclone obscure -)
	pass2=$(head -c 24 /dev/urandom | base64 | rclone obscure -)
	(
		umask 077
		for r in s3 s3w; do
			ep=$AWS_ENDPOINT_URL
			[ "$r" = s3 ] || ep=http://127.0.0.1:${pport:-$port}
			printf '[%s]\ntype = s3\nprovider = Other\nenv_auth = false\n' "$r"
			printf 'access_key_id = %s\nsecret_access_key = %s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
			printf 'region = us-east-1\nendpoint = %s\nforce_path_style = true\n\n' "$ep"
			printf '[%scrypt]\ntype = crypt\nremote = %s:%s/rclone\n' "$r" "$r" "$s3_bucket"
			printf 'password = %s\npassword2 = %s\n\n' "$pass1" "$pass2"
		done >"$s3_dir/rclone.conf"
	)
	# Without AWS_CA_BUNDLE: rclone's S3 SDK refuses a custom CA bundle with
	# its own HTTP transport (and the endpoint is plain http anyway).
	# --expect-continue-timeout 0: Debian's rclone (aws-sdk-go v1) sends
	# "Expect: 100-Continue", which versitygw does not answer (it answers the
	# lowercase form), so each PUT of a part would first stall for rclone's
	# default 1 s timeout: that measures the stall, not rclone.
	local -a rcl=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$s3_dir/rclone.conf" rclone --expect-continue-timeout 0)
	"${rcl[@]}" mkdir "s3:$s3_bucket"

	img=$(s3_random_image "$s3_size")
	size=$(stat -c %s "$img")
	cat "$img" >/dev/null

	s3_runs "" "$AWS_ENDPOINT_URL" s3crypt "$img" "$size"
	if [ -n "$far" ]; then
		s3_coldship_runs " @proxy" "http://127.0.0.1:$p0port" "$img" "$size"
		s3_runs "$far" "http://127.0.0.1:$pport" s3wcrypt "$img" "$size"
		log ""
		log "### S3 at ${s3_rtt_ms} ms RTT (toxiproxy latency $((s3_rtt_ms / 2)) ms each way) against loopback, $s3_size random image"
		log ""
		log "| run                         | loop s | proxy s | @${s3_rtt_ms}ms s | / loop | / proxy | CPU s/GiB loop | CPU s/GiB @${s3_rtt_ms}ms | RSS MiB loop | RSS MiB @${s3_rtt_ms}ms |"
		log "|-----------------------------|--------|--------|--------|--------|--------|-------|-------|------|------|"
		for r in "coldship send (s3)" "coldship receive (s3)" "rclone copy to crypt (s3)" "rclone copy from crypt (s3)"; do
			s3_wan_row "$r" "$size"
		done
		bench_target "coldship send at ${s3_rtt_ms} ms / loopback" "coldship send (s3)$far" "coldship send (s3)" "<=" 1.5
		bench_target "coldship receive at ${s3_rtt_ms} ms / loopback" "coldship receive (s3)$far" "coldship receive (s3)" "<=" 1.5
		bench_target "coldship send at ${s3_rtt_ms} ms / proxy without latency" "coldship send (s3)$far" "coldship send (s3) @proxy" "<=" 1.5
		bench_target "coldship receive at ${s3_rtt_ms} ms / proxy without latency" "coldship receive (s3)$far" "coldship receive (s3) @proxy" "<=" 1.5
	else
		log ""
		log "SKIPPED: ${s3_rtt_ms} ms RTT runs: toxiproxy not installed (scripts/install-test-deps.sh --bench)"
	fi

	s3_cleanup
	trap - EXIT INT TERM
}
