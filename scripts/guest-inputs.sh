#!/usr/bin/env bash
# Puts on this host what the test guest fixture (tests/support/fixture.rs)
# needs, and records where it is in DIR/inputs.env:
#   KERNEL   a Debian cloud kernel bzImage (boots under QEMU microvm + TCG)
#   MODULES  its lib/modules/VERSION directory (virtio and friends are modules)
#   BUSYBOX  a static busybox for the initramfs
#
# Usage: scripts/guest-inputs.sh [DIR]   (default: target/guest-inputs)
#
# Idempotent: packages already installed are not reinstalled, apt lists are
# refreshed only when something is missing, and a kernel already unpacked in
# DIR is kept. Set KERNEL_DEB=/path/to/linux-image-*.deb to use a kernel
# package you already have instead of downloading one.
set -euo pipefail

DIR="${1:-target/guest-inputs}"
META_PKG=linux-image-cloud-amd64
HOST_PKGS=(qemu-system-x86 busybox-static)
BUSYBOX=/bin/busybox

log() { echo "guest-inputs: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

pkg_installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

apt_updated=0
apt_update_once() {
	if [ "$apt_updated" -eq 0 ]; then
		log "apt-get update"
		as_root apt-get update -qq
		apt_updated=1
	fi
}

missing=()
for p in "${HOST_PKGS[@]}"; do
	pkg_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	apt_update_once
	log "installing ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found after installing busybox-static"
# The initramfs has no libc: a dynamically linked busybox would not run.
if command -v file >/dev/null 2>&1 && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
	die "$BUSYBOX is not statically linked (is busybox-static installed?)"
fi

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

find_kernel() {
	local k
	for k in "$DIR"/kernel/boot/vmlinuz-*; do
		[ -f "$k" ] && {
			echo "$k"
			return 0
		}
	done
	return 1
}

find_deb() {
	local d
	for d in "$DIR"/debs/"$1"_*.deb; do
		[ -f "$d" ] && {
			echo "$d"
			return 0
		}
	done
	return 1
}

if ! KERNEL="$(find_kernel)"; then
	deb="${KERNEL_DEB:-}"
	if [ -z "$deb" ]; then
		resolve() {
			apt-cache depends "$META_PKG" 2>/dev/null |
				awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
		}
		pkg="$(resolve || true)"
		if [ -z "$pkg" ]; then
			apt_update_once
			pkg="$(resolve || true)"
		fi
		[ -n "$pkg" ] || die "cannot resolve $META_PKG to a linux-image-VERSION package"
		mkdir -p "$DIR/debs"
		deb="$(find_deb "$pkg" || true)"
		if [ -z "$deb" ]; then
			log "downloading $pkg"
			# apt-get download writes into the current directory; as root its
			# _apt sandbox user could not write there, so say so up front.
			sandbox=()
			[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
			(cd "$DIR/debs" && apt-get download -qq "${sandbox[@]}" "$pkg")
			deb="$(find_deb "$pkg")" || die "apt-get download left no ${pkg}_*.deb"
		fi
	fi
	[ -f "$deb" ] || die "kernel package $deb not found"
	log "unpacking $(basename "$deb")"
	rm -rf "$DIR/kernel.tmp"
	mkdir -p "$DIR/kernel.tmp"
	dpkg -x "$deb" "$DIR/kernel.tmp"
	rm -rf "$DIR/kernel"
	mv "$DIR/kernel.tmp" "$DIR/kernel"
	KERNEL="$(find_kernel)" || die "no boot/vmlinuz-* in $deb"
fi

VERSION="${KERNEL##*/vmlinuz-}"
MODULES="$DIR/kernel/lib/modules/$VERSION"
[ -d "$MODULES" ] || die "module directory $MODULES missing"

tmp="$DIR/inputs.env.tmp"
{
	echo "# written by scripts/guest-inputs.sh"
	echo "KERNEL=$KERNEL"
	echo "MODULES=$MODULES"
	echo "BUSYBOX=$BUSYBOX"
} >"$tmp"
mv "$tmp" "$DIR/inputs.env"
log "wrote $DIR/inputs.env"
cat "$DIR/inputs.env"
