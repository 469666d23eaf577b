#!/usr/bin/env bash
# make demo: a sealed round trip of a sample VM through a local destination.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/coldship
d=demo
rm -rf "$d"
mkdir -p "$d/vm"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. a sample VM: a 512 MiB sparse disk image with data, zero runs and holes, and its config"
img=$d/vm/disk.img
truncate -s 512M "$img"
dd if=/dev/urandom of="$img" bs=1M count=24 conv=notrunc status=none             # 'boot' data at 0
dd if=/dev/zero of="$img" bs=1M count=16 seek=64 conv=notrunc status=none        # allocated zeros
awk 'BEGIN { for (i = 0; i < 250000; i++) printf "Nov 22 00:00:%02d web01 app[42]: request %d served\n", i % 60, i }' |
	dd of="$img" bs=1M seek=200 conv=notrunc status=none iflag=fullblock                     # compressible logs
dd if=/dev/urandom of="$img" bs=1M count=8 seek=500 conv=notrunc status=none
printf '<domain><name>demo</name><memory>1048576</memory></domain>\n' >"$d/vm/demo.xml"
ls -ls "$d/vm"
echo "apparent size $(du -sh --apparent-size "$img" | cut -f1), allocated $(du -sh "$img" | cut -f1)"

step "2. a key pair for the destination site"
recipient=$($bin keygen -o "$d/site-b.key")
echo "recipient: $recipient"

step "3. send: sealed, in parallel, holes and zero blocks skipped"
id=$($bin send "$d/vm" --to "$d/dest" -r "$recipient" --name demo)
echo "shipment id on stdout: $id"
find "$d/dest" -type f | sort | sed 's/^/  /'

step "4. list and verify without a key (inventory: sizes and digests)"
$bin list "$d/dest"
$bin verify "$d/dest" "$id"

step "5. verify with the identity (every block authenticated), and show what the shipment holds"
$bin verify "$d/dest" "$id" -i "$d/site-b.key"
$bin show "$d/dest" "$id" -i "$d/site-b.key"
$bin verify --all "$d/dest"

step "6. receive into a new directory"
$bin receive "$d/dest" "$id" -i "$d/site-b.key" --out "$d/restored"

step "7. the restored VM is identical, and as sparse as the source"
cmp "$d/vm/disk.img" "$d/restored/vm/disk.img" && echo "disk.img: identical"
cmp "$d/vm/demo.xml" "$d/restored/vm/demo.xml" && echo "demo.xml: identical"
echo "allocated: source $(du -sh "$img" | cut -f1), restored $(du -sh "$d/restored/vm/disk.img" | cut -f1)"

step "8. a wrong key is refused (exit 4), a tampered segment is caught (exit 5)"
$bin keygen -o "$d/other.key" >/dev/null
set +e
$bin receive "$d/dest" "$id" -i "$d/other.key" --out "$d/wrong" 2>&1; echo "exit status: $?"
seg=$(find "$d/dest/$id/segments" -type f | head -1)
b=$(od -An -tu1 -j5000 -N1 "$seg" | tr -d ' ')
printf "\\$(printf %03o $((b ^ 1)))" | dd of="$seg" bs=1 seek=5000 conv=notrunc status=none
echo "flipped one bit of $seg"

$bin receive "$d/dest" "$id" -i "$d/site-b.key" --out "$d/tampered" 2>&1; echo "exit status: $?"
set -e
[ ! -e "$d/tampered/vm/disk.img" ] && echo "nothing written at a final name"
echo
echo "demo done: see $d/"
