#!/usr/bin/env python3
"""Write-path cost of dirty bitmaps: NBD 4k random writes on a null-co
node with 0 and with 8 enabled bitmaps (64 KiB granularity), blockd next
to a reference daemon.  Same fio job as nbd-bench.py (iodepth 32, fixed
seed); runs alternate between daemons and medians are reported.

    bench/bitmap-bench.py --daemon build/blockd --vs /usr/bin/qemu-storage-daemon
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def connect(path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("daemon exited with %d" % proc.returncode)
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                f = s.makefile("rwb")
                f.readline()  # greeting
                return s, f
            except OSError:
                s.close()
        time.sleep(0.02)
    raise RuntimeError("no socket at %s" % path)


def qmp(f, cmd, args=None):
    msg = {"execute": cmd}
    if args:
        msg["arguments"] = args
    f.write(json.dumps(msg).encode() + b"\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r:
            return r["return"]
        if "error" in r:
            raise RuntimeError("%s: %s" % (cmd, r["error"]["desc"]))


def run_once(daemon, work, nbitmaps, runtime, size):
    qsock = os.path.join(work, "qmp.sock")
    nsock = os.path.join(work, "nbd.sock")
    for p in (qsock, nsock):
        if os.path.exists(p):
            os.unlink(p)
    argv = [daemon, "--blockdev",
            "driver=null-co,node-name=disk,size=%d" % size,
            "--chardev", "socket,path=%s,server=on,wait=off,id=qmp0" % qsock,
            "--monitor", "chardev=qmp0",
            "--nbd-server", "addr.type=unix,addr.path=%s" % nsock,
            "--export", "type=nbd,id=exp0,node-name=disk,name=disk,writable=on"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        s, f = connect(qsock, proc)
        qmp(f, "qmp_capabilities")
        for i in range(nbitmaps):
            qmp(f, "block-dirty-bitmap-add",
                {"node": "disk", "name": "b%d" % i, "granularity": 65536})
        uri = "nbd+unix:///disk?socket=%s" % nsock
        out = subprocess.run(
            ["fio", "--output-format=json", "--ioengine=nbd", "--uri=" + uri,
             "--name=w", "--rw=randwrite", "--bs=4k", "--iodepth=32",
             "--direct=1", "--time_based", "--runtime=%d" % runtime,
             "--size=%d" % size, "--norandommap", "--randrepeat=1",
             "--randseed=4242"],
            capture_output=True, text=True, timeout=runtime + 60)
        if out.returncode != 0:
            raise RuntimeError("fio failed: %s" % out.stderr[-400:])
        job = json.loads(out.stdout[out.stdout.find("{"):])["jobs"][0]
        counts = [b["count"] for n in qmp(f, "query-named-block-nodes")
                  for b in n.get("dirty-bitmaps", [])]
        if nbitmaps and (len(counts) != nbitmaps or min(counts) == 0):
            raise RuntimeError("bitmaps did not record: %r" % counts)
        qmp(f, "quit")
        proc.wait(timeout=30)
        return job["write"]["iops"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--vs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--size", type=int, default=1 << 30)
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    daemons = [("A", args.daemon)] + ([("B", args.vs)] if args.vs else [])
    work = tempfile.mkdtemp(prefix="bitmap-bench.", dir=args.workdir)
    results = {}
    try:
        for nb in (0, 8):
            key = "randwrite, %d bitmaps" % nb
            results[key] = {name: [] for name, _ in daemons}
            for _ in range(args.runs):
                for name, daemon in daemons:
                    iops = run_once(daemon, work, nb, args.runtime, args.size)
                    results[key][name].append(iops)
                    print("%-22s %s %10.0f IOPS" % (key, name, iops),
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n%-22s %12s %12s %8s" % ("workload", "A (IOPS)", "B (IOPS)", "A/B"))
    for key, per in results.items():
        a = statistics.median(per["A"])
        if "B" in per:
            b = statistics.median(per["B"])
            print("%-22s %12.0f %12.0f %8.2f" % (key, a, b, a / b))
        else:
            print("%-22s %12.0f" % (key, a))


if __name__ == "__main__":
    sys.exit(main())
