# shellcheck shell=bash disable=SC2154
# Sourced by scripts/bench.sh (BENCH_SECTIONS="... sftp"), which then calls
# sftp. Uses bench.sh's bin, work, rcpt, results, sparse, sparse_data_mib,
# WALL and its helpers measure, header, ratio, log, bench_target and
# bench_free_port/bench_wait_port.
#
# coldship send over SFTP against its peers, through a real OpenSSH sshd on a
# free loopback port (run as the current user, keys generated here, sshd's
# defaults for MaxSessions and MaxStartups), the same random image for every
# tool in the same run:
#   scp -c aes128-gcm@openssh.com of the plaintext (the unencrypted baseline),
#   age -r | ssh 'cat > f', rclone copy to an rclone crypt remote over sftp,
#   openssl enc -aes-256-ctr then scp (the encrypt-then-scp method), and
#   coldship send at its sftp default (streams from the round trip) and at
#   --streams 8;
# then the same through toxiproxy adding 50 ms each way (100 ms RTT); then
# coldship send and receive on loopback and through toxiproxy at 0, 100 and
# 200 ms RTT (issue 18: latency hidden), with coldship's CPU, sshd's and
# toxiproxy's beside the wall time, the ratio to loopback, and the round
# trip, connections and channels coldship chose; and a sparse image via
# coldship vs rsync --sparse -e ssh.
# Every measurement runs twice; the row shows the best (the machine is shared).
#
# Sizes: BENCH_SFTP_SIZE (default 1G) random image on loopback,
# BENCH_SFTP_WAN_SIZE (default 1G, as on loopback) at 100 ms RTT for the
# peers, BENCH_SFTP_RTT_MS (default 100), BENCH_SFTP_LATENCY_SIZES (default
# 1G; BENCH_BIG=1 adds 4G) and BENCH_SFTP_RTTS (default "100 200") for the
# latency runs (BENCH_SFTP_PEERS=0 skips the peers), and bench.sh's
# BENCH_SPARSE / BENCH_SPARSE_DATA_MIB (16G / 1024).
# A quick check:
#   BENCH_SECTIONS=sftp BENCH_SFTP_SIZE=256M BENCH_SFTP_WAN_SIZE=32M BENCH_SFTP_LATENCY_SIZES=256M \
#     BENCH_SPARSE=2G BENCH_SPARSE_DATA_MIB=128 ./scripts/bench.sh

sftp_size=${BENCH_SFTP_SIZE:-1G}
sftp_wan_size=${BENCH_SFTP_WAN_SIZE:-1G}
sftp_rtt_ms=${BENCH_SFTP_RTT_MS:-100}
sftp_lat_sizes=${BENCH_SFTP_LATENCY_SIZES:-1G}
[ "${BENCH_BIG:-0}" = 0 ] || sftp_lat_sizes="$sftp_lat_sizes 4G"
sftp_rtts=${BENCH_SFTP_RTTS:-100 200}
sftp_peers_on=${BENCH_SFTP_PEERS:-1}
sftp_dir=$work/sftp
sftp_pids=()

# sftp_best PREP NAME BYTES CMD... : like measure, but runs CMD twice (PREP,
# a command without arguments, before each run, untimed) and prints the row
# of the faster run; WALL[NAME] is its wall time. A failed run is reported.
sftp_best() {
	local prep=$1 name=$2 bytes=$3 saved=$results tf line best_line="" best_w="" i
	shift 3
	tf=$(mktemp)
	rm -f "$tf.int"
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
		elif [ -z "$best_w" ] || awk -v a="${WALL[$name]}" -v b="$best_w" 'BEGIN { exit !(a < b) }'; then
			best_w=${WALL[$name]} best_line=$line
		fi
	done
	rm -f "$tf"
	if [ -n "$best_w" ]; then
		WALL[$name]=$best_w
		log "$best_line"
	fi
}

sftp_cleanup() {
	local p
	for p in "${sftp_pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	sftp_pids=()
	rm -rf "$sftp_dir/remote" "$sftp_dir/enc" "$sftp_dir/recv" "$sftp_dir/state" "$sftp_dir/rclone.conf" "$sftp_dir/lat"
}

# sftp_sparseness SOURCE COPY : COPY's allocated and apparent size, and whether
# it is as sparse as SOURCE (allocates at most 1/16 more).
sftp_sparseness() {
	if [ ! -f "$2" ]; then
		echo "missing"
		return 0
	fi
	local a s
	a=$(du -k "$2" | cut -f1)
	s=$(du -k "$1" | cut -f1)
	printf '%s allocated (%s apparent), %s' "$(du -h "$2" | cut -f1)" "$(du -h --apparent-size "$2" | cut -f1)" \
		"$([ "$a" -le $((s + s / 16)) ] && echo sparse || echo "NOT sparse")"
}

sftp_rm_recv() { rm -rf "$sftp_dir/recv"; }

sftp_reset() { # before each timed run: an empty destination
	rm -rf "$sftp_dir/remote" "$sftp_dir/enc" "$sftp_dir/recv"
	mkdir -p "$sftp_dir/remote"
}

# sftp_random_image SIZE : prints the path of a random image of SIZE, made once.
sftp_random_image() {
	local f=$work/random-$1.img
	if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" != "$(numfmt --from=iec "$1")" ]; then
		head -c "$1" /dev/urandom >"$f.tmp"
		mv "$f.tmp" "$f"
	fi
	echo "$f"
}

# sftp_sparse_image : bench.sh's sparse.img ($sparse apparent, $sparse_data_mib
# MiB of random data in 64 MiB runs spread evenly), made if missing or resized.
sftp_sparse_image() {
	local f=$work/sparse.img n step i
	if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" != "$(numfmt --from=iec "$sparse")" ]; then
		rm -f "$f"
		truncate -s "$sparse" "$f"
		n=$((sparse_data_mib / 64))
		step=$(($(numfmt --from=iec "$sparse") / 1048576 / n))
		for i in $(seq 0 $((n - 1))); do
			head -c 64M /dev/urandom | dd of="$f" bs=1M seek=$((i * step)) conv=notrunc status=none
		done
	fi
	echo "$f"
}

sftp_toxiproxy_bin() { # NAME (server|cli) : prints the path of toxiproxy's binary
	local gobin
	if command -v "toxiproxy-$1" >/dev/null; then
		command -v "toxiproxy-$1"
		return 0
	fi
	# go install of .../cmd/server and .../cmd/cli names them server and cli;
	# install-test-deps.sh records which module each came from.
	gobin=$(go env GOBIN 2>/dev/null || true)
	[ -n "$gobin" ] || gobin="$(go env GOPATH 2>/dev/null)/bin"
	if [ -x "$gobin/$1" ] && grep -qs 'github.com/Shopify/toxiproxy' "$gobin/.$1.version"; then
		echo "$gobin/$1"
		return 0
	fi
	return 1
}

# sftp_ssh_opts PORT : sets sftp_ssh to the options of OpenSSH's clients for
# sshd (or the proxy) at PORT: only our key and known_hosts, no user config,
# and AES-GCM, the fastest cipher here, for every OpenSSH-based peer.
sftp_ssh_opts() {
	sftp_ssh=(-F none -i "$sftp_dir/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
		-o UserKnownHostsFile="$sftp_dir/known_hosts" -o GlobalKnownHostsFile=/dev/null
		-o StrictHostKeyChecking=yes -o LogLevel=ERROR -o Port="$1" -c aes128-gcm@openssh.com)
}

# sftp_peers TAG PORT IMG BYTES : one table of every tool through PORT.
sftp_peers() {
	local tag=$1 p=$2 img=$3 bytes=$4 r=$sftp_dir/remote
	local -a ssh
	sftp_ssh_opts "$p"
	ssh=("${sftp_ssh[@]}")
	local -a cs=("$bin" send "$img" -r "$rcpt" -q --no-resume --state-dir "$sftp_dir/state"
		--ssh-key "$sftp_dir/client_key" --known-hosts "$sftp_dir/known_hosts")
	local crypt=lcrypt
	[ "$tag" = "" ] || crypt=wcrypt
	sftp_best sftp_reset "scp -c aes128-gcm$tag" "$bytes" \
		scp "${ssh[@]}" "$img" "root@127.0.0.1:$r/plain.img"
	sftp_best sftp_reset "coldship send$tag" "$bytes" \
		"${cs[@]}" --to "sftp://root@127.0.0.1:$p$r/coldship"
	sftp_best sftp_reset "coldship send --streams 8$tag" "$bytes" \
		"${cs[@]}" --streams 8 --to "sftp://root@127.0.0.1:$p$r/coldship8"
	sftp_best sftp_reset "age -r | ssh cat$tag" "$bytes" \
		bash -c 'set -o pipefail; rcpt=$1 img=$2 dst=$3; shift 3; age -r "$rcpt" "$img" | ssh "$@" root@127.0.0.1 "cat > $(printf %q "$dst")"' \
		_ "$rcpt" "$img" "$r/image.age" "${ssh[@]}"
	sftp_best sftp_reset "rclone crypt$tag" "$bytes" \
		env RCLONE_CONFIG="$sftp_dir/rclone.conf" rclone copy "$img" "$crypt:"
	sftp_best sftp_reset "openssl enc + scp$tag" "$bytes" \
		bash -c 'pass=$1 img=$2 enc=$3 dst=$4; shift 4; openssl enc -aes-256-ctr -pbkdf2 -pass "file:$pass" -in "$img" -out "$enc" && scp "$@" "$enc" "root@127.0.0.1:$dst"' \
		_ "$work/pass" "$img" "$sftp_dir/enc" "$r/image.enc" "${ssh[@]}"
}

# sftp_rclone_conf PORT WANPORT : an sftp remote and a crypt remote over it,
# direct (l) and through the proxy (w).
sftp_rclone_conf() {
	local i p
	(
		umask 077
		for i in l w; do
			p=$1
			[ "$i" = l ] || p=$2
			printf '[%ssftp]\ntype = sftp\nhost = 127.0.0.1\nuser = root\nport = %s\n' "$i" "$p"
			printf 'key_file = %s\nknown_hosts_file = %s\n\n' "$sftp_dir/client_key" "$sftp_dir/known_hosts"
			printf '[%scrypt]\ntype = crypt\nremote = %ssftp:%s/rclone\n' "$i" "$i" "$sftp_dir/remote"
			printf 'password = %s\npassword2 = %s\n\n' "$(head -c 24 /dev/urandom | base64 | rclone obscure -)" \
				"$(head -c 24 /dev/urandom | base64 | rclone obscure -)"
		done >"$sftp_dir/rclone.conf"
	)
}

# sftp_cpu PID : CPU seconds of PID and of its children it has reaped (sshd's
# connections, once they end).
sftp_cpu() {
	awk '{ printf "%.2f", ($14 + $15 + $16 + $17) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# sftp_summary FIELD FILE : a field of the --json summary in FILE.
sftp_summary() {
	grep '"type":"summary"' "$2" | grep -o "\"$1\":[0-9.e+-]*" | tail -1 | cut -d: -f2
}

# sftp_lat_run NAME BYTES PREP CMD... : runs CMD (which writes a --json
# summary on stdout) twice, PREP before each, and keeps the faster run in
# LAT_WALL, LAT_CPU (the command's), LAT_SSHD and LAT_PROXY (CPU seconds)
# and LAT_LINK (round trip, connections x channels); WALL[NAME] too.
sftp_lat_run() {
	local name=$1 bytes=$2 prep=$3 i tf s0 t0 s1 t1 w u sy
	shift 3
	tf=$(mktemp)
	LAT_WALL="" LAT_CPU="" LAT_SSHD="" LAT_PROXY="" LAT_LINK=""
	for i in 1 2; do
		"$prep"
		sync
		s0=$(sftp_cpu "$sftp_sshd_pid")
		t0=$(sftp_cpu "${sftp_toxi_pid:-0}")
		if ! /usr/bin/time -f '%e %U %S' -o "$tf" "$@" >"$tf.out" 2>"$tf.err"; then
			log "FAILED: $name (run $i): $(grep -v '"type":"progress"' "$tf.err" | tail -3)"
			continue
		fi
		sleep 0.2 # sshd reaps its connections
		s1=$(sftp_cpu "$sftp_sshd_pid")
		t1=$(sftp_cpu "${sftp_toxi_pid:-0}")
		read -r w u sy <"$tf"
		if [ -z "$LAT_WALL" ] || awk -v a="$w" -v b="$LAT_WALL" 'BEGIN { exit !(a < b) }'; then
			LAT_WALL=$w
			LAT_CPU=$(awk -v u="$u" -v s="$sy" 'BEGIN { printf "%.2f", u + s }')
			LAT_SSHD=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }')
			LAT_PROXY=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
			LAT_LINK=$(awk -v r="$(sftp_summary rtt_ms "$tf.out")" -v c="$(sftp_summary connections "$tf.out")" \
				-v n="$(sftp_summary channels "$tf.out")" 'BEGIN { if (c > 0) printf "%.0f ms, %d x %.3g", r, c, n / c }')
		fi
	done
	rm -f "$tf" "$tf.out" "$tf.err"
	[ -n "$LAT_WALL" ] || return 0
	WALL[$name]=$LAT_WALL
}

# sftp_lat_row NAME BYTES BASE PROXY : a row of the latency table; BASE is
# the loopback run's name and PROXY the 0 ms proxy run's, for the ratios
# (the second one leaves out what the proxy itself costs).
sftp_lat_row() {
	[ -n "${WALL[$1]:-}" ] || return 0
	awk -v n="$1" -v b="$2" -v w="$LAT_WALL" -v c="$LAT_CPU" -v sd="$LAT_SSHD" -v px="$LAT_PROXY" \
		-v base="${WALL[$3]:-0}" -v pbase="${WALL[$4]:-0}" -v link="$LAT_LINK" 'BEGIN {
		gib = b / 1073741824
		r = (base > 0) ? sprintf("%.2f", w / base) : "-"
		rp = (pbase > 0) ? sprintf("%.2f", w / pbase) : "-"
		printf "| %-30s | %7.2f | %5.0f | %6.2f | %6.2f | %6.2f | %6.2f | %5s | %5s | %-14s |\n", n, w, b / w / 1e6, c, c / gib, sd, px, r, rp, link
	}' | tee -a "$results"
}

sftp_rm_lat() { rm -rf "$sftp_dir/lat" "$sftp_dir/recv"; }

# sftp_latency PORT : coldship send and receive on loopback and through the
# proxies, each size, with ratios to loopback (issue 18's targets: at 100 ms
# RTT <= 1.5x loopback, at 200 ms <= 2x, no more CPU per GiB).
sftp_latency() {
	local sz limg lsize rtt p tag dest
	local -a auth=(--ssh-key "$sftp_dir/client_key" --known-hosts "$sftp_dir/known_hosts" --json)
	for sz in $sftp_lat_sizes; do
		limg=$(sftp_random_image "$sz")
		lsize=$(stat -c %s "$limg")
		cat "$limg" >/dev/null
		log ""
		log "### SFTP latency: $sz random image, send and receive, loopback and through toxiproxy (best of 2 runs)"
		log ""
		log "| run                            | wall s  | MB/s  | CPU s  | CPU s/GiB | sshd CPU s | proxy CPU s | x loopback | x proxy 0 ms | RTT, conns x channels |"
		log "|--------------------------------|---------|-------|--------|--------|--------|--------|-------|-------|----------------|"
		for rtt in loopback 0 $sftp_rtts; do
			if [ "$rtt" = loopback ]; then
				p=$port tag="loopback"
			else
				p=${pports[$rtt]:-}
				[ -n "$p" ] || continue
				tag="toxiproxy ${rtt} ms"
			fi
			dest="sftp://root@127.0.0.1:$p$sftp_dir/lat"
			sftp_lat_run "send $sz, $tag" "$lsize" sftp_rm_lat \
				"$bin" send "$limg" -r "$rcpt" --no-resume --state-dir "$sftp_dir/state" --to "$dest" "${auth[@]}"
			sftp_lat_row "send $sz, $tag" "$lsize" "send $sz, loopback" "send $sz, toxiproxy 0 ms"
			sftp_lat_run "receive $sz, $tag" "$lsize" sftp_rm_recv \
				"$bin" receive "$dest" -i "$work/id.txt" --out "$sftp_dir/recv" "${auth[@]}"
			sftp_lat_row "receive $sz, $tag" "$lsize" "receive $sz, loopback" "receive $sz, toxiproxy 0 ms"
			cmp -s "$limg" "$sftp_dir/recv/$(basename "$limg")" || log "  received image DIFFERS or missing ($tag)"
		done
		for rtt in $sftp_rtts; do
			local lim=1.5
			[ "$rtt" -lt 200 ] || lim=2
			bench_target "send $sz at $rtt ms / loopback" "send $sz, toxiproxy $rtt ms" "send $sz, loopback" "<=" "$lim"
			bench_target "receive $sz at $rtt ms / loopback" "receive $sz, toxiproxy $rtt ms" "receive $sz, loopback" "<=" "$lim"
			ratio "send $sz, toxiproxy $rtt ms" "send $sz, toxiproxy 0 ms"
			ratio "receive $sz, toxiproxy $rtt ms" "receive $sz, toxiproxy 0 ms"
		done
		sftp_rm_lat
	done
}

# sftp: the section, in a subshell: its traps end with it.
sftp() { (sftp_section); }

sftp_section() {
	local img wimg size wsize sp spsize port pport tport tsrv tcli hostpub rtt rs_sparse
	mkdir -p "$sftp_dir"
	sftp_cleanup
	trap 'sftp_cleanup' EXIT
	trap 'sftp_cleanup; echo "sftp: interrupted" >&2; exit 130' INT TERM

	# sshd on a free loopback port, as the current user, keys made here.
	rm -f "$sftp_dir"/host_key* "$sftp_dir"/client_key*
	ssh-keygen -q -t ed25519 -N '' -C coldship-bench-host -f "$sftp_dir/host_key"
	ssh-keygen -q -t ed25519 -N '' -C coldship-bench-client -f "$sftp_dir/client_key"
	cp "$sftp_dir/client_key.pub" "$sftp_dir/authorized_keys"
	[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
	port=$(bench_free_port)
	cat >"$sftp_dir/sshd_config" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $sftp_dir/host_key
PidFile $sftp_dir/sshd.pid
AuthorizedKeysFile $sftp_dir/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
UseDNS no
# bash skips the user's ~/.bashrc at SHLVL=1 (see sftptest/sshd.go)
SetEnv SHLVL=1
LogLevel ERROR
Subsystem sftp internal-sftp
EOF
	# In a session of its own (setsid), as every server here: a Ctrl-C then
	# reaches only the tool being measured, and the EXIT trap ends the servers.
	setsid /usr/sbin/sshd -D -e -f "$sftp_dir/sshd_config" 2>"$sftp_dir/sshd.log" &
	sftp_pids+=("$!")
	sftp_sshd_pid=$!
	bench_wait_port "$port" "$!" "$sftp_dir/sshd.log"
	hostpub=$(cut -d' ' -f1,2 "$sftp_dir/host_key.pub")
	echo "[127.0.0.1]:$port $hostpub" >"$sftp_dir/known_hosts"

	# toxiproxy on loopback: a proxy to sshd for each round trip, with half
	# of it as latency each way (0: the proxy alone, to show its own cost).
	declare -A pports=()
	if tsrv=$(sftp_toxiproxy_bin server) && tcli=$(sftp_toxiproxy_bin cli); then
		tport=$(bench_free_port)
		setsid "$tsrv" -host 127.0.0.1 -port "$tport" >"$sftp_dir/toxiproxy.log" 2>&1 &
		sftp_pids+=("$!")
		sftp_toxi_pid=$!
		bench_wait_port "$tport" "$!" "$sftp_dir/toxiproxy.log"
		for rtt in 0 $sftp_rtt_ms $sftp_rtts; do
			[ -z "${pports[$rtt]:-}" ] || continue
			pport=$(bench_free_port)
			{
				"$tcli" -h "http://127.0.0.1:$tport" create -l "127.0.0.1:$pport" -u "127.0.0.1:$port" "sshd$rtt"
				"$tcli" -h "http://127.0.0.1:$tport" toxic add -t latency -n lat_down -d \
					-a latency=$((rtt / 2)) -a jitter=0 "sshd$rtt"
				"$tcli" -h "http://127.0.0.1:$tport" toxic add -t latency -n lat_up -u \
					-a latency=$((rtt / 2)) -a jitter=0 "sshd$rtt"
			} >>"$sftp_dir/toxiproxy.log"
			echo "[127.0.0.1]:$pport $hostpub" >>"$sftp_dir/known_hosts"
			pports[$rtt]=$pport
		done
	fi
	pport=${pports[$sftp_rtt_ms]:-}

	img=$(sftp_random_image "$sftp_size")
	size=$(stat -c %s "$img")
	cat "$img" >/dev/null

	if [ "$sftp_peers_on" != 0 ]; then
		sftp_rclone_conf "$port" "${pport:-$port}"
		header "SFTP on loopback: $sftp_size random image to OpenSSH sshd (best of 2 runs)"
		sftp_peers "" "$port" "$img" "$size"
		bench_target "coldship send / scp time, loopback" "coldship send" "scp -c aes128-gcm" "<=" 1.3
		bench_target "coldship / rclone crypt throughput, loopback" "rclone crypt" "coldship send" ">=" 1.5
		ratio "coldship send --streams 8" "coldship send"
		ratio "age -r | ssh cat" "coldship send"
		ratio "openssl enc + scp" "coldship send"

		if [ -n "$pport" ]; then
			wimg=$sftp_dir/wan.img
			head -c "$sftp_wan_size" "$img" >"$wimg"
			wsize=$(stat -c %s "$wimg")
			header "SFTP at ${sftp_rtt_ms} ms RTT (toxiproxy latency $((sftp_rtt_ms / 2)) ms each way): $sftp_wan_size random image (best of 2 runs)"
			sftp_peers " @${sftp_rtt_ms}ms" "$pport" "$wimg" "$wsize"
			bench_target "coldship / scp throughput at ${sftp_rtt_ms} ms RTT" "scp -c aes128-gcm @${sftp_rtt_ms}ms" "coldship send @${sftp_rtt_ms}ms" ">=" 5
			ratio "coldship send --streams 8 @${sftp_rtt_ms}ms" "coldship send @${sftp_rtt_ms}ms"
			bench_target "coldship / rclone crypt throughput at ${sftp_rtt_ms} ms RTT" "rclone crypt @${sftp_rtt_ms}ms" "coldship send @${sftp_rtt_ms}ms" ">=" 1.5
			rm -f "$wimg"
		fi
	fi

	if [ ${#pports[@]} -gt 0 ]; then
		sftp_latency "$port"
	else
		log ""
		log "SKIPPED: the runs at ${sftp_rtt_ms} ms RTT and more: toxiproxy not installed (scripts/install-test-deps.sh)"
	fi

	# A sparse image: coldship vs rsync --sparse, plain loopback.
	sp=$(sftp_sparse_image)
	spsize=$(stat -c %s "$sp")
	cat "$sp" >/dev/null
	sftp_ssh_opts "$port"
	header "SFTP on loopback: $sparse sparse image holding $sparse_data_mib MiB of data (best of 2 runs)"
	sftp_best sftp_reset "rsync --sparse -e ssh" "$spsize" \
		rsync --sparse -e "ssh ${sftp_ssh[*]}" "$sp" "root@127.0.0.1:$sftp_dir/remote/"
	rs_sparse=$(sftp_sparseness "$sp" "$sftp_dir/remote/sparse.img")
	sftp_best sftp_reset "coldship send sparse" "$spsize" \
		"$bin" send "$sp" -r "$rcpt" -q --no-resume --state-dir "$sftp_dir/state" \
		--ssh-key "$sftp_dir/client_key" --known-hosts "$sftp_dir/known_hosts" \
		--to "sftp://root@127.0.0.1:$port$sftp_dir/remote/coldship"
	sftp_best sftp_rm_recv "coldship receive sparse" "$spsize" \
		"$bin" receive "sftp://root@127.0.0.1:$port$sftp_dir/remote/coldship" -i "$work/id.txt" -q \
		--ssh-key "$sftp_dir/client_key" --known-hosts "$sftp_dir/known_hosts" --out "$sftp_dir/recv"
	bench_target "rsync / coldship send time, sparse image" "rsync --sparse -e ssh" "coldship send sparse" ">=" 10
	WALL["coldship send + receive sparse"]=$(awk -v a="${WALL["coldship send sparse"]:-0}" -v b="${WALL["coldship receive sparse"]:-0}" 'BEGIN { print (a > 0 && b > 0) ? a + b : 0 }')
	ratio "rsync --sparse -e ssh" "coldship send + receive sparse"
	log "  allocated (apparent size): source $(du -sh "$sp" | cut -f1) ($(du -sh --apparent-size "$sp" | cut -f1)); coldship shipment on the server $(du -sh "$sftp_dir/remote/coldship" 2>/dev/null | cut -f1)"
	log "  at the destination: rsync --sparse: $rs_sparse; coldship (received from the server): $(sftp_sparseness "$sp" "$sftp_dir/recv/sparse.img")"
	if cmp -s "$sp" "$sftp_dir/recv/sparse.img"; then
		log "  restored sparse image identical"
	else
		log "  restored sparse image DIFFERS or missing"
	fi

	sftp_cleanup
	trap - EXIT INT TERM
}
