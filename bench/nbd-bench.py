#!/usr/bin/env python3
"""NBD 4k random I/O on null-co and raw-file nodes, blockd next to a reference.

../shared/bench/bench.py measures qcow2 workloads; this measures the layers
under it: the NBD server and request path alone (null-co: no disk at all) and
with the file driver (a raw image opened with O_DIRECT and io_uring, as
bench.py opens its files).  Each daemon gets the same qemu-storage-daemon
command line; fio's nbd engine drives it with the same job as bench.py
(4k, iodepth 32, fixed seed).  Runs alternate A B A B and medians are
reported.

    bench/nbd-bench.py --daemon build/blockd --vs /usr/bin/qemu-storage-daemon
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

FILE_OPTS = "cache.direct=on,aio=io_uring"


def wait_for_socket(path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("daemon exited with %d" % proc.returncode)
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return s
            except OSError:
                s.close()
        time.sleep(0.02)
    raise RuntimeError("no socket at %s" % path)


def qmp_quit(sock):
    f = sock.makefile("rwb")
    f.readline()  # greeting
    for cmd in ("qmp_capabilities", "quit"):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                break


def run_once(daemon, node_args, workdir, rw, runtime, size):
    qmp = os.path.join(workdir, "qmp.sock")
    nbd = os.path.join(workdir, "nbd.sock")
    for p in (qmp, nbd):
        if os.path.exists(p):
            os.unlink(p)
    argv = [daemon] + node_args + [
        "--chardev", "socket,path=%s,server=on,wait=off,id=qmp0" % qmp,
        "--monitor", "chardev=qmp0",
        "--nbd-server", "addr.type=unix,addr.path=%s" % nbd,
        "--export", "type=nbd,id=exp0,node-name=disk,name=disk,writable=on"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        sock = wait_for_socket(qmp, proc)
        uri = "nbd+unix:///disk?socket=%s" % nbd
        out = subprocess.run(
            ["fio", "--output-format=json", "--ioengine=nbd", "--uri=" + uri,
             "--name=" + rw, "--rw=" + rw, "--bs=4k", "--iodepth=32",
             "--direct=1", "--time_based", "--runtime=%d" % runtime,
             "--size=%d" % size, "--norandommap", "--randrepeat=1",
             "--randseed=4242"],
            capture_output=True, text=True, timeout=runtime + 60)
        if out.returncode != 0:
            raise RuntimeError("fio failed: %s" % out.stderr[-400:])
        job = json.loads(out.stdout[out.stdout.find("{"):])["jobs"][0]
        if job.get("error"):
            raise RuntimeError("fio job error %s" % job["error"])
        side = job["read"] if rw.endswith("read") else job["write"]
        qmp_quit(sock)
        proc.wait(timeout=30)
        return side["iops"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--vs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1]] \
        if args.size[-1] in "MG" else int(args.size)

    daemons = [("A", args.daemon)] + ([("B", args.vs)] if args.vs else [])
    work = tempfile.mkdtemp(prefix="nbd-bench.", dir=args.workdir)
    try:
        raw = os.path.join(work, "disk.raw")
        with open(raw, "wb") as f:  # fully allocated, like bench.py's full.raw
            chunk = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        setups = {
            "null-co": ["--blockdev",
                        "driver=null-co,node-name=disk,size=%d" % size],
            "raw-file": ["--blockdev", "driver=file,node-name=disk-file,"
                         "filename=%s,%s" % (raw, FILE_OPTS),
                         "--blockdev", "driver=raw,node-name=disk,file=disk-file"],
        }
        results = {}
        for setup, node_args in setups.items():
            for rw in ("randread", "randwrite"):
                key = "%s %s" % (setup, rw)
                results[key] = {name: [] for name, _ in daemons}
                for _ in range(args.runs):
                    for name, daemon in daemons:
                        iops = run_once(daemon, node_args, work, rw,
                                        args.runtime, size)
                        results[key][name].append(iops)
                        print("%-20s %s %10.0f IOPS" % (key, name, iops),
                              flush=True)
        print("\n%-20s %12s %12s %8s" % ("workload", "A (IOPS)",
                                         "B (IOPS)", "A/B"))
        for key, per in results.items():
            a = statistics.median(per["A"])
            if "B" in per:
                b = statistics.median(per["B"])
                print("%-20s %12.0f %12.0f %8.2f" % (key, a, b, a / b))
            else:
                print("%-20s %12.0f" % (key, a))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
