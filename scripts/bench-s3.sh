# shellcheck shell=bash disable=SC2154
# Sourced by scripts/bench.sh (BENCH_SECTIONS="... s3"), which then calls s3.
# Uses bench.sh's bin, work, rcpt, results, WALL and its helpers measure,
# header, ratio, log, bench_target and bench_free_port/bench_wait_port.
#
# coldship send and receive over S3 against rclone copy to and from an rclone
# crypt remote, both on the same local Versity S3 Gateway (versitygw, posix
# backend, a free loopback port), the same random image in the same run.
# Every measurement runs twice; the row shows the best (the machine is
# shared), and the RSS target is checked against the larger of the two runs.
#
# Size: BENCH_S3_SIZE (default 1G). A quick check:
#   BENCH_SECTIONS=s3 BENCH_S3_SIZE=256M ./scripts/bench.sh

s3_size=${BENCH_S3_SIZE:-1G}
s3_dir=$work/s3
s3_bucket=coldship-bench
s3_pids=()
declare -gA S3_RSS=()

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
		fi
	done
	rm -f "$tf"
	if [ -n "$best_w" ]; then
		WALL[$name]=$best_w
		log "$best_line"
	fi
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
	rm -rf "$s3_dir/gw" "$s3_dir/recv" "$s3_dir/rback" "$s3_dir/state" "$s3_dir/rclone.conf"
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

	# rclone: an s3 remote on the same server, a crypt remote over it.
	(
		umask 077
		cat >"$s3_dir/rclone.conf" <<EOF
[s3]
type = s3
provider = Other
env_auth = false
access_key_id = $AWS_ACCESS_KEY_ID
secret_access_key = $AWS_SECRET_ACCESS_KEY
region = us-east-1
endpoint = $AWS_ENDPOINT_URL
force_path_style = true

[s3crypt]
type = crypt
remote = s3:$s3_bucket/rclone
password = $(head -c 24 /dev/urandom | base64 | rclone obscure -)
password2 = $(head -c 24 /dev/urandom | base64 | rclone obscure -)
EOF
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

	header "S3 (versitygw on loopback): $s3_size random image, send (best of 2 runs)"
	s3_best s3_clear_coldship "coldship send (s3)" "$size" \
		"$bin" send "$img" --to "s3://$s3_bucket/coldship" -r "$rcpt" -q --no-resume --state-dir "$s3_dir/state"
	s3_best s3_clear_rclone "rclone copy to crypt (s3)" "$size" \
		"${rcl[@]}" copy "$img" s3crypt:
	bench_target "coldship / rclone crypt throughput, send" "rclone copy to crypt (s3)" "coldship send (s3)" ">=" 1.5
	s3_rss_target "coldship send (s3)" 256

	header "S3 (versitygw on loopback): $s3_size random image, receive (best of 2 runs)"
	s3_best s3_clear_recv "coldship receive (s3)" "$size" \
		"$bin" receive "s3://$s3_bucket/coldship" -i "$work/id.txt" --out "$s3_dir/recv" -q
	s3_best s3_clear_rback "rclone copy from crypt (s3)" "$size" \
		"${rcl[@]}" copy "s3crypt:$(basename "$img")" "$s3_dir/rback"
	bench_target "coldship / rclone crypt throughput, receive" "rclone copy from crypt (s3)" "coldship receive (s3)" ">=" 1.5
	s3_rss_target "coldship receive (s3)" 256
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

	s3_cleanup
	trap - EXIT INT TERM
}
