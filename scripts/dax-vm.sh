#!/usr/bin/env bash
# Runs a program, or the pool test suite, inside a QEMU guest whose emulated NVDIMM is set up
# as an fsdax namespace with ext4 mounted `-o dax` on it: a real DAX file system, where
# MAP_SYNC works, on a machine without persistent memory (and without KVM: TCG is enough).
#
#   scripts/dax-vm.sh [--timeout SECS] -- PROGRAM [ARGS...]
#   scripts/dax-vm.sh [--timeout SECS] --cargo-test [CARGO TEST ARGS...] [-- TEST ARGS...]
#   scripts/dax-vm.sh --cargo-test -p pmstore-pool    (build only the pool crate's tests)
#
# In the guest: modules loaded, namespace0.0 reconfigured as fsdax (memmap on the device, like
# `ndctl create-namespace -m fsdax --map=dev`), mke2fs on /dev/pmem0, mounted -o dax on
# /mnt/dax, tmpfs on /dev/shm and /tmp; then PROGRAM runs in /mnt/dax with
# TMPDIR=/mnt/dax PMSTORE_TEST_DAX_DIR=/mnt/dax (PMSTORE_FORCE_MODE is never passed in).
# The script exits with the program's exit code; 124 on timeout; 125 when the VM or the DAX
# setup failed.
#
# --cargo-test builds the workspace's test executables (`cargo test --workspace --no-run`,
# with CARGO TEST ARGS; without --workspace when they name a package with -p) and runs those of the crates in PMSTORE_DAX_CRATES (default:
# pmstore-pool: its unit tests and integration tests) one after the other in ONE guest boot,
# each as `BINARY --test-threads=2 -q [TEST ARGS]`; it fails if any of them fails.
#
# Environment:
#   PMSTORE_DAX_CACHE     where the guest kernel is kept (default: <workspace>/target/dax-vm)
#   PMSTORE_DAX_KERNEL_PKG  Debian kernel package (default: what linux-image-amd64 depends on)
#   PMSTORE_DAX_MEM       guest RAM (default 1G)        PMSTORE_DAX_SMP   guest CPUs (default 2)
#   PMSTORE_DAX_PMEM_SIZE size of the emulated NVDIMM (default 512M)
#   PMSTORE_DAX_CRATES    packages whose test binaries --cargo-test runs (default pmstore-pool)
#   PMSTORE_DAX_PASS_ENV  names of extra variables to pass into the guest (RUST_BACKTRACE
#                         and RUST_LOG always are)
#   PMSTORE_DAX_VERBOSE=1 kernel messages on the console, guest setup traced
#   PMSTORE_DAX_KEEP=1    keep the run directory (initramfs, console log, NVDIMM image)
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PMSTORE_DAX_CACHE:-$ROOT/target/dax-vm}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac
MEM=${PMSTORE_DAX_MEM:-1G}
SMP=${PMSTORE_DAX_SMP:-2}
PMEM_SIZE=${PMSTORE_DAX_PMEM_SIZE:-512M}
CRATES=${PMSTORE_DAX_CRATES:-pmstore-pool}
VERBOSE=${PMSTORE_DAX_VERBOSE:-0}
TIMEOUT=600
MODE=
CARGO_ARGS=()
TEST_ARGS=()
PROGRAM=()

while [ $# -gt 0 ]; do
    case $1 in
    --timeout)
        [ $# -ge 2 ] || usage
        TIMEOUT=$2
        shift 2
        ;;
    --timeout=*)
        TIMEOUT=${1#--timeout=}
        shift
        ;;
    --cargo-test)
        MODE=cargo
        shift
        while [ $# -gt 0 ] && [ "$1" != -- ]; do
            CARGO_ARGS+=("$1")
            shift
        done
        if [ $# -gt 0 ]; then
            shift
            TEST_ARGS=("$@")
        fi
        break
        ;;
    --)
        shift
        [ $# -gt 0 ] || usage
        MODE=program
        PROGRAM=("$@")
        break
        ;;
    -h | --help) usage ;;
    *)
        echo "dax-vm: unknown argument: $1" >&2
        usage
        ;;
    esac
done
[ -n "$MODE" ] || usage
case $TIMEOUT in '' | *[!0-9]*) echo "dax-vm: --timeout wants whole seconds" >&2 && exit 2 ;; esac

log() { echo "dax-vm: $*" >&2; }
die() {
    log "$*"
    exit 125
}

# ---------------------------------------------------------------------------------------------
# Host tools

ensure_tools() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
    command -v cpio >/dev/null || need+=(cpio)
    [ -x /sbin/mke2fs ] || need+=(e2fsprogs)
    command -v modinfo >/dev/null || need+=(kmod)
    command -v xz >/dev/null || need+=(xz-utils)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        [ "$(id -u)" = 0 ] || die "need root to install ${need[*]}"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
    fi
}

# ---------------------------------------------------------------------------------------------
# Guest kernel: a Debian linux-image package unpacked (never installed) into the cache, its
# vmlinuz decompressed to an ELF vmlinux (QEMU boots that through PVH, which saves the guest
# decompressing it under TCG), and the modules the guest needs, with their load order.

# Modules the guest loads, dependencies first (resolved below from the .ko files themselves).
WANT_MODULES="nfit nd_pmem crc32c_generic ext4"

ensure_kernel() {
    KDIR=$CACHE/kernel
    if [ -f "$KDIR/ready" ] && { [ -z "${PMSTORE_DAX_KERNEL_PKG:-}" ] ||
        [ "$(cat "$KDIR/package")" = "$PMSTORE_DAX_KERNEL_PKG" ]; }; then
        return
    fi
    mkdir -p "$CACHE"
    local pkg=${PMSTORE_DAX_KERNEL_PKG:-}
    kernel_pkg() {
        apt-cache depends linux-image-amd64 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1
    }
    if [ -z "$pkg" ]; then
        pkg=$(kernel_pkg)
        if [ -z "$pkg" ]; then
            apt-get update -qq >&2
            pkg=$(kernel_pkg)
        fi
        [ -n "$pkg" ] || die "cannot tell which linux-image package linux-image-amd64 wants"
    fi
    log "fetching guest kernel $pkg"
    local tmp
    tmp=$(mktemp -d "$CACHE/kernel.tmp.XXXXXX")
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
        die "apt-get download $pkg failed"
    dpkg -x "$tmp"/*.deb "$tmp/x"
    local rel
    rel=$(basename "$(find "$tmp/x/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
    local mdir=$tmp/x/lib/modules/$rel
    mkdir -p "$tmp/out/modules"
    # vmlinuz is a bzImage with an xz (or gzip/zstd) payload: find it and decompress it.
    local z=$tmp/x/boot/vmlinuz-$rel off
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$z" | head -n1 | cut -d: -f1 || true)
    if [ -n "$off" ]; then
        tail -c +$((off + 1)) "$z" | xz -dc >"$tmp/out/vmlinux" 2>/dev/null || true
    elif off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$z" | head -n1 | cut -d: -f1) &&
        [ -n "$off" ] && command -v zstd >/dev/null; then
        tail -c +$((off + 1)) "$z" | zstd -dcq >"$tmp/out/vmlinux" 2>/dev/null || true
    elif off=$(LC_ALL=C grep -obUaP '\x1f\x8b\x08' "$z" | head -n1 | cut -d: -f1) &&
        [ -n "$off" ]; then
        tail -c +$((off + 1)) "$z" | gzip -dc >"$tmp/out/vmlinux" 2>/dev/null || true
    fi
    if [ "$(head -c 4 "$tmp/out/vmlinux" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; then
        log "decompressed vmlinux ($(du -m "$tmp/out/vmlinux" | cut -f1) MiB)"
    else
        log "could not decompress vmlinuz: booting the bzImage"
        rm -f "$tmp/out/vmlinux"
        cp "$z" "$tmp/out/bzImage"
    fi
    # Resolve module dependencies (the package has no modules.dep: depmod makes it on install).
    declare -A path=()
    local f n
    while IFS= read -r f; do
        n=$(basename "$f")
        n=${n%%.ko*}
        path[${n//-/_}]=$f
    done < <(find "$mdir/kernel" -name '*.ko*')
    local order=()
    declare -A seen=()
    visit() {
        local m=${1//-/_} d
        [ -z "${seen[$m]:-}" ] || return 0
        seen[$m]=1
        if [ -z "${path[$m]:-}" ]; then
            # Built in (or absent: then insmod of what depends on it reports it).
            grep -q "/${m}.ko" "$mdir/modules.builtin" 2>/dev/null ||
                grep -q "/${m//_/-}.ko" "$mdir/modules.builtin" 2>/dev/null ||
                log "warning: module $m neither built in nor in the package"
            return 0
        fi
        for d in $(modinfo -F depends "${path[$m]}" | tr ',' ' '); do
            visit "$d"
        done
        order+=("$m")
    }
    for n in $WANT_MODULES; do
        visit "$n"
    done
    for n in "${order[@]}"; do
        case ${path[$n]} in
        *.ko) cp "${path[$n]}" "$tmp/out/modules/$n.ko" ;;
        *.ko.xz) xz -dc "${path[$n]}" >"$tmp/out/modules/$n.ko" ;;
        *.ko.zst) zstd -dcq "${path[$n]}" >"$tmp/out/modules/$n.ko" ;;
        *.ko.gz) gzip -dc "${path[$n]}" >"$tmp/out/modules/$n.ko" ;;
        esac
        echo "$n" >>"$tmp/out/modules/load.list"
    done
    echo "$rel" >"$tmp/out/release"
    echo "$pkg" >"$tmp/out/package"
    touch "$tmp/out/ready"
    rm -rf "$KDIR"
    mv "$tmp/out" "$KDIR"
    rm -rf "$tmp"
    log "guest kernel $rel ready in $KDIR (modules: ${order[*]})"
}

# ---------------------------------------------------------------------------------------------
# Initramfs

# Copies an ELF executable and the shared libraries it needs into the tree at $1.
copy_with_libs() {
    local tree=$1 src=$2 dst=$3 lib
    mkdir -p "$tree/$(dirname "$dst")"
    cp -L "$src" "$tree/$dst"
    chmod 755 "$tree/$dst"
    if [ "${STRIP:-0}" = 1 ] && command -v objcopy >/dev/null; then
        objcopy --strip-debug "$tree/$dst" 2>/dev/null || true
    fi
    ldd "$src" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' |
        while IFS= read -r lib; do
            [ -e "$tree$lib" ] && continue
            mkdir -p "$tree$(dirname "$lib")"
            cp -L "$lib" "$tree$lib"
        done
}

# Single-quotes a word for the guest's shell.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

write_init() {
    cat >"$1" <<'EOF'
#!/bin/busybox sh
# dax-vm guest init: DAX setup, then /dax/cmd, then power off.
/bin/busybox mkdir -p /proc /sys /dev /tmp /var/tmp /mnt/dax /sbin /usr/bin /usr/sbin /root
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
. /dax/config
[ "$VERBOSE" = 1 ] && set -x

finish() {
    cd /
    sync
    echo "DAXVM-EXIT $1"
    poweroff -f
    sleep 10
}
fail() {
    echo "dax-vm: guest setup failed: $*"
    dmesg | tail -n 25
    finish 125
}
wait_for() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1))
        [ $i -gt 100 ] && return 1
        sleep 0.1
    done
}

while read -r m; do
    insmod "/modules/$m.ko" || fail "insmod $m"
done </modules/load.list

# The emulated NVDIMM comes up as a label-less "raw" namespace (/dev/pmem0 without struct
# pages, which DAX cannot use). Claim it with a pfn device whose memmap lives on the device
# itself, as `ndctl create-namespace -f -e namespace0.0 -m fsdax --map=dev` does.
ND=/sys/bus/nd
wait_for $ND/devices/namespace0.0 || fail "no namespace0.0 (is the NVDIMM there? nfit loaded?)"
wait_for $ND/devices/region0/pfn_seed || fail "region0 has no pfn_seed"
if [ -e $ND/drivers/nd_pmem/namespace0.0 ]; then
    echo namespace0.0 >$ND/drivers/nd_pmem/unbind || fail "unbind namespace0.0"
fi
pfn=$(cat $ND/devices/region0/pfn_seed)
[ -n "$pfn" ] && [ -e $ND/devices/$pfn ] || fail "no pfn seed device"
cat /proc/sys/kernel/random/uuid >$ND/devices/$pfn/uuid || fail "pfn uuid"
echo pmem >$ND/devices/$pfn/mode || fail "pfn mode"
echo 2097152 >$ND/devices/$pfn/align 2>/dev/null || echo 4096 >$ND/devices/$pfn/align
echo namespace0.0 >$ND/devices/$pfn/namespace || fail "pfn namespace"
echo "$pfn" >$ND/drivers/nd_pmem/bind || fail "bind $pfn"
wait_for /dev/pmem0 || fail "no /dev/pmem0 after binding $pfn"
[ -e /sys/block/pmem0/dax ] || [ "$(cat /sys/block/pmem0/queue/dax 2>/dev/null)" = 1 ] ||
    fail "/dev/pmem0 does not support DAX"

/e2fs/mke2fs -q -F -t ext4 -b 4096 -E nodiscard /dev/pmem0 || fail "mke2fs /dev/pmem0"
mount -t ext4 -o dax /dev/pmem0 /mnt/dax || fail "mount -o dax /dev/pmem0"
grep -q ' /mnt/dax ext4 .*dax' /proc/mounts || fail "/mnt/dax is not mounted with dax: $(grep /mnt/dax /proc/mounts)"
kib=$(df -k /mnt/dax | awk 'NR==2 {print $2}')
echo "dax-vm: $pfn (fsdax, memmap on device, align $(cat $ND/devices/$pfn/align)) -> /dev/pmem0, ext4 -o dax on /mnt/dax ($((kib / 1024)) MiB), $(nproc) CPUs, kernel $(uname -r)"
set +x

cd /mnt/dax
export TMPDIR=/mnt/dax PMSTORE_TEST_DAX_DIR=/mnt/dax
unset PMSTORE_FORCE_MODE
[ -f /dax/env ] && . /dax/env
sh /dax/cmd
rc=$?
cd /
umount /mnt/dax || echo "dax-vm: warning: umount /mnt/dax failed"
finish $rc
EOF
    chmod 755 "$1"
}

# Builds the initramfs at $1 (a newc cpio, uncompressed: the guest unpacks it faster than it
# would decompress it under TCG). The caller has filled $TREE/dax (programs, cmd, env).
build_initramfs() {
    local out=$1 tree=$TREE
    mkdir -p "$tree/bin" "$tree/modules" "$tree/e2fs" "$tree/etc"
    cp /bin/busybox "$tree/bin/busybox"
    cp "$KDIR"/modules/* "$tree/modules/"
    STRIP=0 copy_with_libs "$tree" /sbin/mke2fs /e2fs/mke2fs
    [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$tree/etc/"
    write_init "$tree/init"
    echo "VERBOSE=$VERBOSE" >"$tree/dax/config"
    chmod -R a+rX "$tree"
    (cd "$tree" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
}

# ---------------------------------------------------------------------------------------------
# Boot

run_vm() {
    local initrd=$1 kernel
    if [ -f "$KDIR/vmlinux" ]; then kernel=$KDIR/vmlinux; else kernel=$KDIR/bzImage; fi
    truncate -s "$PMEM_SIZE" "$RUN/pmem.img"
    local append="console=ttyS0 panic=-1 rdinit=/init"
    if [ "$VERBOSE" = 1 ]; then append+=" loglevel=6"; else append+=" quiet loglevel=1"; fi
    local accel=(-accel tcg)
    if [ "${PMSTORE_DAX_KVM:-0}" = 1 ]; then accel=(-accel kvm -accel tcg); fi
    # shellcheck disable=SC2054 # the commas are QEMU's
    local qemu=(qemu-system-x86_64 -nodefaults -no-user-config -machine pc,nvdimm=on
        "${accel[@]}" -cpu max -smp "$SMP" -m "$MEM,slots=2,maxmem=${PMSTORE_DAX_MAXMEM:-16G}"
        -object "memory-backend-file,id=mem1,share=on,mem-path=$RUN/pmem.img,size=$PMEM_SIZE"
        -device nvdimm,id=nv1,memdev=mem1
        -kernel "$kernel" -initrd "$initrd" -append "$append"
        -display none -serial stdio -monitor none -no-reboot)
    [ "$VERBOSE" = 1 ] && log "${qemu[*]}"
    local start=$SECONDS rc=0
    set +e
    timeout -k 10 "$TIMEOUT" "${qemu[@]}" </dev/null 2>&1 | tr -d '\r' | tee "$RUN/console.log"
    local st=("${PIPESTATUS[@]}")
    set -e
    rc=${st[0]}
    local code
    code=$(sed -n 's/^DAXVM-EXIT \([0-9]*\)$/\1/p' "$RUN/console.log" | tail -n1)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        log "timed out after ${TIMEOUT}s"
        return 124
    fi
    if [ -z "$code" ]; then
        log "the guest reported no exit code (qemu exited with $rc after $((SECONDS - start))s)"
        return 125
    fi
    log "guest done in $((SECONDS - start))s, exit code $code"
    return "$code"
}

# ---------------------------------------------------------------------------------------------

ensure_tools
ensure_kernel
mkdir -p "$CACHE/runs"
RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
if [ "${PMSTORE_DAX_KEEP:-0}" = 1 ]; then
    log "keeping $RUN"
else
    trap 'rm -rf "$RUN"' EXIT
fi
TREE=$RUN/tree
mkdir -p "$TREE/dax/bin"

# Variables passed into the guest.
{
    for v in RUST_BACKTRACE RUST_LOG ${PMSTORE_DAX_PASS_ENV:-}; do
        if [ -n "${!v+x}" ]; then
            echo "export $v=$(shq "${!v}")"
        fi
    done
} >"$TREE/dax/env"

if [ "$MODE" = program ]; then
    prog=${PROGRAM[0]}
    if [[ $prog != */* ]]; then
        prog=$(command -v "$prog") || die "no such program: ${PROGRAM[0]}"
    fi
    [ -f "$prog" ] || die "no such program: $prog"
    STRIP=0 copy_with_libs "$TREE" "$prog" "/dax/bin/$(basename "$prog")"
    {
        printf '%s' "$(shq "/dax/bin/$(basename "$prog")")"
        for a in "${PROGRAM[@]:1}"; do
            printf ' %s' "$(shq "$a")"
        done
        echo
    } >"$TREE/dax/cmd"
else
    # The whole workspace, unless the caller picks packages (`--cargo-test -p pmstore-pool`
    # builds only what it runs, and does not need the other crates to compile).
    scope=(--workspace)
    for a in "${CARGO_ARGS[@]}"; do
        case $a in -p | --package | -p?* | --package=*) scope=() ;; esac
    done
    log "building test executables (cargo test ${scope[*]} --no-run ${CARGO_ARGS[*]})"
    (cd "$ROOT" && cargo test "${scope[@]}" --no-run --message-format=json "${CARGO_ARGS[@]}") \
        >"$RUN/cargo.json" || die "cargo test --no-run failed"
    tests=()
    for crate in $CRATES; do
        while IFS= read -r exe; do
            [ -n "$exe" ] || continue
            name=$(basename "$exe")
            STRIP=1 copy_with_libs "$TREE" "$exe" "/dax/bin/$name"
            tests+=("$name")
        done < <(grep '"reason":"compiler-artifact"' "$RUN/cargo.json" |
            grep -E "(#|/)$crate@|/$crate#[0-9]|\"package_id\":\"$crate " |
            grep '"test":true' |
            sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
    done
    [ ${#tests[@]} -gt 0 ] || die "no test executables found for: $CRATES"
    log "test executables: ${tests[*]}"
    targs=
    for a in "${TEST_ARGS[@]}"; do targs+=" $(shq "$a")"; done
    cat >"$TREE/dax/cmd" <<EOF
failed=
for t in ${tests[*]}; do
    echo "== \$t"
    /dax/bin/\$t --test-threads=2 -q$targs || failed="\$failed \$t"
done
if [ -n "\$failed" ]; then
    echo "dax-vm: FAILED:\$failed"
    exit 1
fi
echo "dax-vm: all ${#tests[@]} test executables passed on DAX"
EOF
fi

build_initramfs "$RUN/initramfs.cpio"
log "initramfs $(du -m "$RUN/initramfs.cpio" | cut -f1) MiB; booting (timeout ${TIMEOUT}s)"
set +e
run_vm "$RUN/initramfs.cpio"
rc=$?
set -e
exit $rc
