#!/usr/bin/env bash
# setup.sh: make this Debian host able to build hypeman and run its guests.
#
#   scripts/setup.sh [packages] [go] [kernel]     (no argument: all three, in this order)
#
# 1. packages: installs the Debian packages hypeman shells out to (QEMU, mkfs
#    tools, ...), checking dpkg first so that a second run does no apt work at all.
# 2. go: makes sure the Go toolchain go.mod asks for is there. When `go` is missing
#    from PATH or older than go.mod's `toolchain`/`go` line (Debian 12 ships 1.19), it
#    fetches the toolchain module golang.org/toolchain@v0.0.1-go<ver>.linux-<arch>
#    from the Go module proxy ($GOPROXY, default https://proxy.golang.org), checks
#    the go.sum-style h1: hash of the module zip, and unpacks it to
#    $HYPEMAN_GO_PREFIX/go-<ver> (default /usr/local/go-<ver>), linking go and gofmt
#    into $HYPEMAN_GO_PREFIX/bin. The Makefile looks there first.
# 3. kernel: fetches the guest kernel (a Debian cloud kernel, via `apt-get download`,
#    never installed on the host) and lays it out for internal/system:
#      $KERNEL_DIR/<version>/vmlinux   uncompressed ELF (QEMU boots it via PVH)
#      $KERNEL_DIR/<version>/vmlinuz   the original bzImage
#      $KERNEL_DIR/<version>/config    the kernel build config
#      $KERNEL_DIR/<version>/modules/lib/modules/<version>/  modules tree + modules.dep
#      $KERNEL_DIR/current -> <version>                  (switched atomically)
#
# Idempotent and fast when everything is present (no apt-cache / apt-get / network
# calls then); concurrent runs are serialized with flock.
#
# Environment:
#   HYPEMAN_DATA_DIR        data dir (default /var/lib/hypeman)
#   HYPEMAN_KERNEL_DIR      kernel dir (default $HYPEMAN_DATA_DIR/system/kernel)
#   HYPEMAN_KERNEL_PACKAGE  kernel package, meta or versioned (default linux-image-cloud-amd64)
#   HYPEMAN_KERNEL_REFRESH  if non-empty, ask apt which version the package wants now and
#                           install it if it differs from `current` (otherwise an installed
#                           kernel fetched for the same package name is kept as is)
#   HYPEMAN_SKIP_PACKAGES   if non-empty, do not check/install Debian packages
#   HYPEMAN_GO_PREFIX       where the Go toolchain goes (default /usr/local): <prefix>/go-<ver>,
#                           links in <prefix>/bin
#   HYPEMAN_GO_VERSION      Go version to require (default: go.mod's toolchain or go line)
#   HYPEMAN_GO_H1           expected h1: hash of the toolchain zip (default: pinned below for
#                           known versions, else looked up in the Go checksum database)
#   HYPEMAN_GO_CACHE        if set, a directory keeping downloaded toolchain zips (re-checked
#                           by hash on every use)
#   GOPROXY                 Go module proxy list; the first http(s) entry is used
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
DATA_DIR=${HYPEMAN_DATA_DIR:-/var/lib/hypeman}
KERNEL_DIR=${HYPEMAN_KERNEL_DIR:-$DATA_DIR/system/kernel}
KERNEL_PACKAGE=${HYPEMAN_KERNEL_PACKAGE:-linux-image-cloud-amd64}

# Debian 12: qemu-system-x86 ships /usr/bin/qemu-system-x86_64.
PACKAGES=(qemu-system-x86 e2fsprogs erofs-utils busybox-static kmod xz-utils lz4 zstd cpio iproute2 nftables)

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf 'setup: %s\n' "$*"; }
die() {
	printf 'setup: error: %s\n' "$*" >&2
	exit 1
}

SUDO=()
if [[ $EUID -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

APT_OPTS=(-q -o Acquire::Retries=2 -o Acquire::http::Timeout=30 -o DPkg::Lock::Timeout=300)

apt_updated=0
apt_update() {
	[[ $apt_updated -eq 1 ]] && return 0
	log "apt-get update"
	if ! "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update >/tmp/hypeman-setup-apt-update.$$ 2>&1 ||
		grep -qE '^(E:|Err:)' /tmp/hypeman-setup-apt-update.$$; then
		sed 's/^/  /' /tmp/hypeman-setup-apt-update.$$ >&2
		rm -f /tmp/hypeman-setup-apt-update.$$
		die "apt-get update failed: cannot reach the Debian package mirrors (no network?). Fix apt access, or install the packages yourself and point hypeman at a kernel image + modules dir in its config."
	fi
	rm -f /tmp/hypeman-setup-apt-update.$$
	apt_updated=1
}

# ---------------------------------------------------------------- packages

# install_packages [PKG...]: install the missing ones of PKG (default: PACKAGES).
install_packages() {
	local status missing=() p pkgs=("$@")
	[[ ${#pkgs[@]} -gt 0 ]] || pkgs=("${PACKAGES[@]}")
	status=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${pkgs[@]}" 2>/dev/null || true)
	for p in "${pkgs[@]}"; do
		if grep -qE "^$p ii" <<<"$status"; then continue; fi
		missing+=("$p")
	done
	if [[ ${#missing[@]} -eq 0 ]]; then
		log "packages: all ${#pkgs[@]} present (${pkgs[*]})"
		return
	fi
	[[ $EUID -eq 0 || ${#SUDO[@]} -gt 0 ]] || die "packages missing (${missing[*]}) and not root (no sudo): install them yourself"
	apt_update
	log "packages: installing ${missing[*]}"
	if ! "${SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${missing[@]}" >/tmp/hypeman-setup-apt-install.$$ 2>&1; then
		tail -n 20 /tmp/hypeman-setup-apt-install.$$ | sed 's/^/  /' >&2
		rm -f /tmp/hypeman-setup-apt-install.$$
		die "apt-get install ${missing[*]} failed (see above; no network to the Debian mirrors?)"
	fi
	rm -f /tmp/hypeman-setup-apt-install.$$
	log "packages: installed ${missing[*]}"
}

# ---------------------------------------------------------------- go toolchain

# Known h1: hashes (go.sum style: dirhash of the module zip) of toolchain modules,
# taken from the Go checksum database (sum.golang.org). A version not listed here is
# looked up there at run time, or given with HYPEMAN_GO_H1.
declare -A GO_TOOLCHAIN_H1=(
	[v0.0.1-go1.26.8.linux-amd64]="h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM="
)

# go_required prints the Go version the repo needs: $HYPEMAN_GO_VERSION, else go.mod's
# toolchain line, else its go line.
go_required() {
	if [[ -n ${HYPEMAN_GO_VERSION:-} ]]; then
		printf '%s\n' "${HYPEMAN_GO_VERSION#go}"
		return
	fi
	local tc gl
	tc=$(sed -n 's/^toolchain go\([0-9][^ ]*\).*/\1/p' "$REPO_DIR/go.mod")
	gl=$(sed -n 's/^go \([0-9][^ ]*\).*/\1/p' "$REPO_DIR/go.mod")
	[[ -n $tc || -n $gl ]] || die "go: $REPO_DIR/go.mod has no go or toolchain line"
	printf '%s\n' "${tc:-$gl}"
}

# go_version_of BIN prints BIN's Go version (1.26.8), or nothing. GOTOOLCHAIN=local and
# running outside the repo keep a newer go from fetching another toolchain for the check.
go_version_of() {
	local out
	out=$(cd / && GOTOOLCHAIN=local "$1" version 2>/dev/null) || return 0
	sed -n 's/^go version go\([0-9][0-9.]*\)[^ ]* .*/\1/p' <<<"$out"
}

# version_ge A B: A >= B for dotted versions.
version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

# go_proxy_url prints the first http(s) entry of $GOPROXY (default proxy.golang.org).
go_proxy_url() {
	local list=${GOPROXY:-https://proxy.golang.org} e
	for e in ${list//[,|]/ }; do
		case $e in
		http://* | https://*)
			printf '%s\n' "${e%/}"
			return
			;;
		off) die "go: GOPROXY=off: cannot fetch the Go toolchain (install Go $GO_REQUIRED yourself)" ;;
		esac
	done
	printf '%s\n' https://proxy.golang.org
}

# go_expected_h1 MODVER prints the h1: hash the toolchain zip must have: $HYPEMAN_GO_H1,
# the pinned table, or the checksum database's record (asked directly, then through the
# proxy's sumdb endpoint, which serves the same signed database).
go_expected_h1() {
	local modver=$1 url out h1
	if [[ -n ${HYPEMAN_GO_H1:-} ]]; then
		printf '%s\n' "$HYPEMAN_GO_H1"
		return
	fi
	if [[ -n ${GO_TOOLCHAIN_H1[$modver]:-} ]]; then
		printf '%s\n' "${GO_TOOLCHAIN_H1[$modver]}"
		return
	fi
	for url in "https://sum.golang.org/lookup/golang.org/toolchain@$modver" \
		"$(go_proxy_url)/sumdb/sum.golang.org/lookup/golang.org/toolchain@$modver"; do
		out=$(curl -fsSL --max-time 30 "$url" 2>/dev/null) || continue
		h1=$(awk -v m="golang.org/toolchain" -v v="$modver" '$1 == m && $2 == v { print $3; exit }' <<<"$out")
		if [[ $h1 == h1:* ]]; then
			log "go: h1 hash of toolchain@$modver from ${url%%/lookup/*}"
			printf '%s\n' "$h1"
			return
		fi
	done
	die "go: no known hash for golang.org/toolchain@$modver and the checksum database is unreachable; set HYPEMAN_GO_H1=h1:... (from a go.sum or https://sum.golang.org/lookup/golang.org/toolchain@$modver)"
}

# tree_h1 DIR prints the go.sum-style h1: hash of the files under DIR, named relative
# to DIR exactly as in the module zip: base64(sha256 of the sorted "sha256  name" lines).
tree_h1() {
	local hex
	hex=$(cd "$1" && find . -mindepth 1 -type f -printf '%P\0' | LC_ALL=C sort -z |
		xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1)
	printf 'h1:%s\n' "$(printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64)"
}

go_arch() {
	case $(uname -m) in
	x86_64) echo amd64 ;;
	aarch64) echo arm64 ;;
	*) die "go: no Go toolchain for machine $(uname -m)" ;;
	esac
}

install_go() {
	GO_REQUIRED=$(go_required)
	local prefix=${HYPEMAN_GO_PREFIX:-/usr/local}
	local root="$prefix/go-$GO_REQUIRED" have onpath
	have=$(go_version_of "$root/bin/go")
	if [[ -n $have ]] && version_ge "$have" "$GO_REQUIRED"; then
		log "go: $have present in $root, skipped"
		return
	fi
	onpath=$(command -v go || true)
	if [[ -n $onpath ]]; then
		have=$(go_version_of "$onpath")
		if [[ -n $have ]] && version_ge "$have" "$GO_REQUIRED"; then
			log "go: $have on PATH ($onpath) satisfies go.mod's $GO_REQUIRED, skipped"
			return
		fi
		log "go: $onpath is go ${have:-(unknown version)}, older than go.mod's $GO_REQUIRED: installing $GO_REQUIRED into $root"
	else
		log "go: no go on PATH: installing $GO_REQUIRED into $root"
	fi

	mkdir -p "$prefix" 2>/dev/null && [[ -w $prefix ]] ||
		die "go: cannot write $prefix: run as root, or set HYPEMAN_GO_PREFIX to a writable directory (e.g. \$HOME/.local)"
	local need=()
	command -v curl >/dev/null || need+=(curl ca-certificates)
	command -v unzip >/dev/null || need+=(unzip)
	[[ ${#need[@]} -eq 0 ]] || install_packages "${need[@]}"

	# Serialize concurrent setups (make run and make test started together).
	exec 8>"$prefix/.go-$GO_REQUIRED.setup.lock"
	flock 8
	have=$(go_version_of "$root/bin/go")
	if [[ -n $have ]] && version_ge "$have" "$GO_REQUIRED"; then
		log "go: $have installed meanwhile by another setup run, skipped"
		return
	fi
	rm -rf "$prefix"/.go-stage-* # leftovers of an interrupted run (we hold the lock)

	local modver="v0.0.1-go$GO_REQUIRED.linux-$(go_arch)" want
	want=$(go_expected_h1 "$modver")
	local stage="$prefix/.go-stage-$$"
	TMPDIRS+=("$stage")
	mkdir -p "$stage"
	local zip="$stage/toolchain.zip" cached=""
	if [[ -n ${HYPEMAN_GO_CACHE:-} ]]; then
		mkdir -p "$HYPEMAN_GO_CACHE"
		cached="$HYPEMAN_GO_CACHE/golang.org-toolchain@$modver.zip"
	fi
	if [[ -n $cached && -s $cached ]]; then
		log "go: using cached $cached"
		cp "$cached" "$zip"
	else
		local url
		url="$(go_proxy_url)/golang.org/toolchain/@v/$modver.zip"
		log "go: fetching $url"
		curl -fsSL --retry 2 --max-time 600 -o "$zip" "$url" ||
			die "go: download of $url failed (no network to the Go module proxy? set GOPROXY)"
		if [[ -n $cached ]]; then
			cp "$zip" "$cached.tmp.$$" && mv -f "$cached.tmp.$$" "$cached"
		fi
	fi
	unzip -q "$zip" -d "$stage/x" || die "go: $zip is not a valid zip"
	rm -f "$zip"
	local got
	got=$(tree_h1 "$stage/x")
	if [[ $got != "$want" ]]; then
		[[ -z $cached ]] || rm -f "$cached"
		die "go: hash mismatch for golang.org/toolchain@$modver: got $got, want $want (refusing to install)"
	fi
	local tree="$stage/x/golang.org/toolchain@$modver"
	[[ -f $tree/bin/go && -d $tree/pkg/tool ]] || die "go: toolchain zip has no bin/go or pkg/tool"
	# The module zip need not carry file modes: make the commands executable (the
	# same files the go command fixes up after a toolchain download).
	find "$tree/pkg/tool" "$tree/bin" -type f -exec chmod a+rx {} +
	find "$tree/lib" -type f -name 'go_?*_?*_exec' -exec chmod a+rx {} + 2>/dev/null || true
	chmod -R a+rX "$tree"
	have=$(go_version_of "$tree/bin/go")
	[[ $have == "$GO_REQUIRED" ]] || die "go: unpacked toolchain reports version '${have}', want $GO_REQUIRED"

	rm -rf "$root"
	mv -T "$tree" "$root"
	mkdir -p "$prefix/bin"
	local tool link
	for tool in go gofmt; do
		link="$prefix/bin/$tool"
		if [[ -e $link && ! -L $link ]]; then
			log "go: $link exists and is not a link: left alone (use $root/bin/$tool)"
			continue
		fi
		ln -sfn "../go-$GO_REQUIRED/bin/$tool" "$link.tmp.$$"
		mv -T "$link.tmp.$$" "$link"
	done
	log "go: installed $(cd / && GOTOOLCHAIN=local "$root/bin/go" version) into $root (hash $got), linked into $prefix/bin"
}

# ---------------------------------------------------------------- kernel

# resolve_kernel_package prints the versioned linux-image package behind $KERNEL_PACKAGE.
resolve_kernel_package() {
	local out dep
	out=$(apt-cache depends "$KERNEL_PACKAGE" 2>/dev/null || true)
	dep=$(sed -n 's/^ *|\?Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' <<<"$out" | head -n1)
	if [[ -n $dep ]]; then
		printf '%s\n' "$dep"
	elif [[ $KERNEL_PACKAGE =~ ^linux-image-[0-9] ]] && grep -q "^$KERNEL_PACKAGE\$" <<<"$out"; then
		printf '%s\n' "$KERNEL_PACKAGE" # already a versioned package
	fi
}

# extract_vmlinux BZIMAGE OUT: write the uncompressed ELF kernel carried in a bzImage.
# The boot protocol header (>= 2.08) says where the compressed payload is
# (payload_offset/payload_length, relative to the protected-mode code after the
# setup sectors); its magic tells the compressor. Every format but gzip has the
# uncompressed size appended as 4 little-endian bytes, which we strip and verify.
extract_vmlinux() {
	local img=$1 out=$2 setup_sects poff plen start magic4 magic6 trailer size
	[[ $(dd if="$img" bs=1 skip=514 count=4 status=none) == HdrS ]] || die "$img: not a bzImage (no HdrS header)"
	setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$img" | tr -d ' ')
	[[ $setup_sects -eq 0 ]] && setup_sects=4
	read -r poff plen < <(od -An -tu4 -j $((0x248)) -N8 "$img")
	start=$(((setup_sects + 1) * 512 + poff))
	magic4=$(od -An -tx1 -j "$start" -N4 "$img" | tr -d ' \n')
	magic6=$(od -An -tx1 -j "$start" -N6 "$img" | tr -d ' \n')
	trailer=$((plen - 4))
	local -a dec
	case $magic4 in
	02214c18) dec=(lz4 -dc) ;;
	28b52ffd) dec=(zstd -dc) ;;
	1f8b08*) dec=(gzip -dc) trailer=$plen ;;
	*)
		case $magic6 in
		fd377a585a00) dec=(xz -dc --single-stream) ;;
		*) case ${magic4:0:6} in
			425a68) dec=(bzip2 -dc) ;;
			5d0000) dec=(xz -dc --format=lzma) ;;
			*) die "$img: unknown kernel payload compression (magic $magic6)" ;;
			esac ;;
		esac
		;;
	esac
	command -v "${dec[0]}" >/dev/null || die "need ${dec[0]} to decompress $img"
	head -c $((start + trailer)) "$img" | tail -c "$trailer" | "${dec[@]}" >"$out" ||
		die "$img: decompressing the ${dec[0]} payload failed"
	[[ $(head -c 4 "$out" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] || die "$img: payload is not an ELF kernel"
	if [[ $trailer -ne $plen ]]; then
		size=$(od -An -tu4 -j $((start + plen - 4)) -N4 "$img" | tr -d ' ')
		[[ $(stat -c %s "$out") -eq $size ]] || die "$img: vmlinux size $(stat -c %s "$out") != header size $size"
	fi
	printf '%s\n' "${dec[0]}"
}

TMPDIRS=()
cleanup() { [[ ${#TMPDIRS[@]} -eq 0 ]] || rm -rf "${TMPDIRS[@]}"; }
trap cleanup EXIT

# kernel_current_ok: true when current/vmlinux exists and came from $KERNEL_PACKAGE
# (sets cur_ver). Answered from files only, so a warm run needs no apt.
kernel_current_ok() {
	cur_ver=""
	[[ -f $KERNEL_DIR/current/vmlinux ]] || return 1
	cur_ver=$(basename "$(readlink -f "$KERNEL_DIR/current")")
	local cur_req
	cur_req=$(cat "$KERNEL_DIR/current/requested-package" 2>/dev/null || true)
	[[ -z ${HYPEMAN_KERNEL_REFRESH:-} ]] &&
		[[ $cur_req == "$KERNEL_PACKAGE" || "linux-image-$cur_ver" == "$KERNEL_PACKAGE" ]]
}

install_kernel() {
	local cur_ver=""
	if kernel_current_ok; then
		log "kernel: $cur_ver present in $KERNEL_DIR/current (from $KERNEL_PACKAGE), skipped"
		return
	fi
	# Serialize concurrent setups (make test and make run started together).
	mkdir -p "$KERNEL_DIR"
	exec 9>"$KERNEL_DIR/.setup.lock"
	flock 9
	if kernel_current_ok; then
		log "kernel: $cur_ver installed meanwhile by another setup run, skipped"
		return
	fi
	rm -rf "$KERNEL_DIR"/.stage-* # leftovers of an interrupted run (we hold the lock)

	local pkg
	pkg=$(resolve_kernel_package)
	if [[ -z $pkg ]]; then
		apt_update
		pkg=$(resolve_kernel_package)
	fi
	[[ -n $pkg ]] || die "kernel: apt knows no package $KERNEL_PACKAGE (set HYPEMAN_KERNEL_PACKAGE to a linux-image-* package)"
	local ver=${pkg#linux-image-}
	if [[ $cur_ver == "$ver" ]]; then
		echo "$KERNEL_PACKAGE" >"$KERNEL_DIR/current/requested-package"
		log "kernel: $ver present in $KERNEL_DIR/current, up to date with $KERNEL_PACKAGE, skipped"
		return
	fi

	log "kernel: fetching $pkg"
	local tmp
	tmp=$(mktemp -d /tmp/hypeman-kernel.XXXXXX)
	TMPDIRS+=("$tmp")
	chmod 755 "$tmp" # let apt's _apt sandbox user write the download
	if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$pkg" >"$tmp/download.log" 2>&1); then
		if [[ $apt_updated -eq 0 ]]; then
			apt_update
			(cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$pkg" >"$tmp/download.log" 2>&1) || true
		fi
	fi
	local debs=("$tmp"/*.deb) deb
	deb=${debs[0]}
	if [[ ! -f $deb ]]; then
		sed 's/^/  /' "$tmp/download.log" >&2
		die "kernel: apt-get download $pkg failed (no network to the Debian mirrors?)"
	fi
	dpkg-deb -x "$deb" "$tmp/x"

	# The modules tree names the real kernel release; trust it over the package name.
	local mods
	mods=$(ls "$tmp/x/lib/modules" 2>/dev/null || true)
	[[ -n $mods && $(wc -l <<<"$mods") -eq 1 ]] || die "kernel: $deb has no single lib/modules/<version> dir"
	ver=$mods
	[[ -f $tmp/x/boot/vmlinuz-$ver ]] || die "kernel: $deb has no boot/vmlinuz-$ver"

	local stage="$KERNEL_DIR/.stage-$ver.$$"
	rm -rf "$stage"
	TMPDIRS+=("$stage")
	mkdir -p "$stage/modules/lib/modules"
	cp "$tmp/x/boot/vmlinuz-$ver" "$stage/vmlinuz"
	[[ -f $tmp/x/boot/config-$ver ]] && cp "$tmp/x/boot/config-$ver" "$stage/config"
	local comp
	comp=$(extract_vmlinux "$stage/vmlinuz" "$stage/vmlinux")
	mv "$tmp/x/lib/modules/$ver" "$stage/modules/lib/modules/$ver"
	depmod -b "$stage/modules" "$ver"
	[[ -s $stage/modules/lib/modules/$ver/modules.dep ]] || die "kernel: depmod produced no modules.dep"
	echo "$KERNEL_PACKAGE" >"$stage/requested-package"
	dpkg-deb -f "$deb" Package Version | tr '\n' ' ' | sed 's/ $/\n/' >"$stage/package"

	rm -rf "${KERNEL_DIR:?}/$ver"
	mv -T "$stage" "$KERNEL_DIR/$ver"
	ln -sfn "$ver" "$KERNEL_DIR/.current.tmp.$$"
	mv -T "$KERNEL_DIR/.current.tmp.$$" "$KERNEL_DIR/current"
	sync -f "$KERNEL_DIR/current" 2>/dev/null || true
	log "kernel: installed $ver into $KERNEL_DIR/$ver (vmlinux $(du -h "$KERNEL_DIR/$ver/vmlinux" | cut -f1) from $comp payload, $(find "$KERNEL_DIR/$ver/modules" -name '*.ko*' | wc -l) modules), current -> $ver"
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(packages go kernel)
for step in "${steps[@]}"; do
	case $step in
	packages)
		if [[ -z ${HYPEMAN_SKIP_PACKAGES:-} ]]; then
			install_packages
		else
			log "packages: skipped (HYPEMAN_SKIP_PACKAGES set)"
		fi
		;;
	go) install_go ;;
	kernel) install_kernel ;;
	*) die "unknown step '$step' (want packages, go or kernel)" ;;
	esac
done
