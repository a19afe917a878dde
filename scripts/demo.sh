#!/usr/bin/env bash
# Start a demo blockd: one image exported over NBD, a QMP socket, in the
# foreground until Ctrl-C.  Usage: scripts/demo.sh [BUILDDIR]
# DAEMON=/usr/bin/qemu-storage-daemon IMG=/usr/bin/qemu-img runs the reference.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
builddir=${1:-build}
case "$builddir" in /*) ;; *) builddir=$top/$builddir ;; esac

find_bin() {  # meson puts programs under daemon/; accept both places
  for c in "$builddir/$1" "$builddir/daemon/$1"; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}
DAEMON=${DAEMON:-$(find_bin blockd || true)}
IMG=${IMG:-$(find_bin blockd-img || true)}
if [ -z "$DAEMON" ] || [ ! -x "$DAEMON" ]; then
  echo "demo: no blockd binary in $builddir (run 'make' first)" >&2
  exit 1
fi

run=$top/run
mkdir -p "$run"
rm -f "$run/qmp.sock" "$run/nbd.sock"

# Prefer a qcow2 image; fall back to raw when the image tool cannot make one.
fmt=
if [ -f "$run/demo.qcow2" ]; then
  fmt=qcow2
elif [ -n "$IMG" ] && "$IMG" create -f qcow2 "$run/demo.qcow2" 64M >/dev/null 2>&1; then
  fmt=qcow2
else
  rm -f "$run/demo.qcow2"
  fmt=raw
  if [ ! -f "$run/demo.raw" ]; then
    if [ -n "$IMG" ] && "$IMG" create -f raw "$run/demo.raw" 64M >/dev/null 2>&1; then :
    else truncate -s 64M "$run/demo.raw"; fi
  fi
  echo "demo: qcow2 images are not supported by this build yet: using raw image run/demo.raw"
fi
image=$run/demo.$fmt

cat <<EOT
demo: starting $(basename "$DAEMON") with $image exported as NBD export 'demo'

  QMP (type JSON lines; the first must be qmp_capabilities):
    socat - UNIX-CONNECT:$run/qmp.sock
    {"execute": "qmp_capabilities"}
    {"execute": "query-named-block-nodes", "arguments": {"flat": true}}
    {"execute": "query-block-exports"}
    {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "null0", "size": 1048576}}
    {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "export1", "node-name": "null0", "name": "null"}}

  NBD:
    nbdinfo 'nbd+unix:///demo?socket=$run/nbd.sock'
    nbdinfo --map 'nbd+unix:///demo?socket=$run/nbd.sock'
    qemu-io -f raw -c 'write -P 0xab 0 64k' -c 'read -P 0xab 0 64k' 'nbd+unix:///demo?socket=$run/nbd.sock'

  Ctrl-C stops the daemon.
EOT

node=file0
args=(--blockdev "driver=file,node-name=file0,filename=$image")
if [ "$fmt" = qcow2 ]; then
  args+=(--blockdev "driver=qcow2,node-name=disk0,file=file0")
  node=disk0
fi
args+=(--chardev "socket,id=mon0,path=$run/qmp.sock,server=on,wait=off"
       --monitor chardev=mon0
       --nbd-server "addr.type=unix,addr.path=$run/nbd.sock"
       --export "type=nbd,id=export0,node-name=$node,name=demo,writable=on")
exec "$DAEMON" "${args[@]}"
