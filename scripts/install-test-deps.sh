#!/usr/bin/env bash
# Installs what coldship's tests need: Debian packages and pinned Go tools.
# Idempotent: installs only what is missing. --bench adds the peers that
# `make bench` measures against.
set -euo pipefail

debs=(openssh-server openssh-sftp-server openssh-client qemu-utils libvirt-clients util-linux)
# The live tests drop or reset the packets of a data connection.
debs+=(iptables)
# The archive tests decode frames of runs with the reference zstd.
debs+=(zstd)
# The boot test (cmd/coldship/boot_test.go): a busybox guest on an ext4 root,
# booted under QEMU with Debian's kernel and initrd.
debs+=(qemu-system-x86 busybox-static linux-image-amd64 e2fsprogs)
if [ "${1:-}" = "--bench" ]; then
	debs+=(age openssl rclone restic rsync time)
fi

missing=()
for p in "${debs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	echo "installing Debian packages: ${missing[*]}" >&2
	$sudo apt-get update -qq
	# Non-interactive throughout, through sudo too: the kernel's postinst
	# runs update-initramfs, and an upgraded conffile keeps local changes.
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
fi

# Pinned Go tools, installed into $(go env GOPATH)/bin where the tests look.
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
install_go_tool() { # name module@version
	if [ ! -x "$gobin/$1" ] || ! grep -qx "$2" "$gobin/.$1.version" 2>/dev/null; then
		echo "installing $2" >&2
		go install "$2"
		echo "$2" >"$gobin/.$1.version"
	fi
}
while read -r name mod; do
	[ -n "$name" ] && install_go_tool "$name" "$mod"
done <<'TOOLS'
versitygw github.com/versity/versitygw/cmd/versitygw@v1.8.0
TOOLS

# toxiproxy: latency between coldship and sshd, for the tests (a modest
# delay) and the benchmarks (100 and 200 ms). Its commands build as
# "server" and "cli": install them in a directory of their own and link
# them under their usual names.
tv=v2.12.0
if ! grep -qx "$tv" "$gobin/.toxiproxy.version" 2>/dev/null || [ ! -x "$gobin/toxiproxy-server" ]; then
	echo "installing toxiproxy $tv" >&2
	mkdir -p "$gobin/toxiproxy"
	GOBIN="$gobin/toxiproxy" go install "github.com/Shopify/toxiproxy/v2/cmd/server@$tv" "github.com/Shopify/toxiproxy/v2/cmd/cli@$tv"
	ln -sf "$gobin/toxiproxy/server" "$gobin/toxiproxy-server"
	ln -sf "$gobin/toxiproxy/cli" "$gobin/toxiproxy-cli"
	echo "$tv" >"$gobin/.toxiproxy.version"
fi
