#!/usr/bin/env python3
"""Disk traffic of block-commit (active) and block-stream, blockd next to a
reference daemon: job time, bytes read and written on the disk holding the
images (from /proc/diskstats), device flushes, and the share of the run
the disk moved data at its best observed rate.

The images are those of ../shared/bench/bench.py (64 KiB clusters): a base
with 60% of its clusters allocated and an overlay with 50%, in runs of 1-16
clusters, files opened with cache.direct=on,aio=io_uring.  Runs alternate
between the daemons; medians are reported.  The point of the byte counts:
when both daemons move the same bytes in the same number of flushes and the
disk is saturated, the time ratio is the disk's, not the daemon's.

    bench/job-io-bench.py --daemon build/blockd --vs /usr/bin/qemu-storage-daemon
"""
import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import FILE_OPTS, Qmp, parse_size  # noqa: E402

CLUSTER = 64 * 1024


def cluster_runs(nclusters, frac, seed):
    """Allocated cluster runs (start, length) covering ~frac of the image."""
    rng = random.Random(seed)
    runs, i = [], rng.randint(0, 16)
    gap_scale = (1.0 - frac) / frac
    while i < nclusters:
        n = min(rng.randint(1, 16), nclusters - i)
        runs.append((i, n))
        i += n + max(1, int(round(rng.randint(1, 16) * gap_scale)))
    return runs


def make_qcow2(path, size, runs, seed, img):
    """A qcow2 image holding random data in `runs` (written through a
    sparse raw file and converted, so data clusters are laid out in order)."""
    raw = path + ".raw"
    rng = random.Random(seed)
    with open(raw, "wb") as f:
        f.truncate(size)
        for start, n in runs:
            f.seek(start * CLUSTER)
            f.write(rng.randbytes(n * CLUSTER))
    subprocess.run([img, "convert", "-f", "raw", "-O", "qcow2", "-o",
                    "cluster_size=%d" % CLUSTER, raw, path], check=True)
    os.unlink(raw)


def disk_of(path):
    """The /proc/diskstats name of the block device holding path."""
    dev = os.stat(path).st_dev
    name = os.path.basename(os.path.realpath(
        "/sys/dev/block/%d:%d" % (os.major(dev), os.minor(dev))))
    # a partition counts in its own line too: use it as it is
    return name


def diskstats(name):
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if x[2] == name:
                v = [int(n) for n in x[3:]]
                # sectors read, sectors written, flushes (kernel >= 5.5)
                return v[2] * 512, v[6] * 512, v[15] if len(v) > 15 else 0
    raise RuntimeError("no %s in /proc/diskstats" % name)


class JobDaemon:
    """A daemon with the base <- top chain and its QMP monitor; events
    are kept while waiting for replies."""

    def __init__(self, binary, work, base, top, base_ro):
        sock = os.path.join(work, "qmp.sock")
        ro = ",read-only=on" if base_ro else ""
        argv = [binary,
                "--blockdev", "driver=file,node-name=base-file,filename=%s,%s%s"
                % (base, FILE_OPTS, ro),
                "--blockdev", "driver=qcow2,node-name=base,file=base-file" + ro,
                "--blockdev", "driver=file,node-name=top-file,filename=%s,%s"
                % (top, FILE_OPTS),
                "--blockdev", "driver=qcow2,node-name=top,file=top-file,backing=base",
                "--chardev", "socket,path=%s,server=on,wait=off,id=qmp0" % sock,
                "--monitor", "chardev=qmp0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.qmp = Qmp(sock, self.proc)
        self.qmp.cmd("qmp_capabilities")

    def wait_event(self, names, timeout=600):
        f = self.qmp.file
        self.qmp.sock.settimeout(timeout)
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("daemon closed the monitor")
            msg = json.loads(line)
            if msg.get("event") in names:
                return msg

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            x = f.read().rsplit(")", 1)[1].split()
        return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")

    def quit(self):
        self.qmp.cmd("quit")
        self.proc.wait(timeout=60)


def run_job(binary, job, fix, work, disk):
    base = os.path.join(work, "base.qcow2")
    top = os.path.join(work, "top.qcow2")
    shutil.copyfile(os.path.join(fix, "base.qcow2"), base)
    shutil.copyfile(os.path.join(fix, "top.qcow2"), top)
    os.sync()
    d = JobDaemon(binary, work, base, top, base_ro=(job == "stream"))
    try:
        cpu0 = d.cpu_s()
        io0 = diskstats(disk)
        t0 = time.perf_counter()
        if job == "commit":
            d.qmp.cmd("block-commit", {"job-id": "j", "device": "top"})
            d.wait_event(("BLOCK_JOB_READY",))
            d.qmp.cmd("job-complete", {"id": "j"})
        else:
            d.qmp.cmd("block-stream", {"job-id": "j", "device": "top"})
        ev = d.wait_event(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"))
        secs = time.perf_counter() - t0
        io1 = diskstats(disk)
        cpu = d.cpu_s() - cpu0
        if ev["event"] != "BLOCK_JOB_COMPLETED" or ev["data"].get("error"):
            raise RuntimeError("%s failed: %s" % (job, ev))
        d.quit()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    rd, wr, fl = (b - a for a, b in zip(io0, io1))
    return {"time_s": secs, "read_MB": rd / 1e6, "written_MB": wr / 1e6,
            "flushes": fl, "cpu_s": cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--vs")
    ap.add_argument("--img", default="qemu-img",
                    help="image tool that makes the fixtures")
    ap.add_argument("--size", default="2G")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--jobs", default="commit,stream")
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    size = parse_size(args.size)
    n = size // CLUSTER
    daemons = {"A": args.daemon}
    if args.vs:
        daemons["B"] = args.vs
    root = tempfile.mkdtemp(prefix="job-io-", dir=args.workdir)
    try:
        fix = os.path.join(root, "fix")
        work = os.path.join(root, "run")
        os.makedirs(fix)
        os.makedirs(work)
        make_qcow2(os.path.join(fix, "base.qcow2"), size,
                   cluster_runs(n, 0.60, 60), 1, args.img)
        make_qcow2(os.path.join(fix, "top.qcow2"), size,
                   cluster_runs(n, 0.50, 50), 2, args.img)
        subprocess.run([args.img, "rebase", "-u", "-f", "qcow2", "-b",
                        "base.qcow2", "-F", "qcow2",
                        os.path.join(fix, "top.qcow2")], check=True)
        disk = disk_of(work)
        results = {}
        for job in args.jobs.split(","):
            for r in range(args.runs):
                # ABBA order: no daemon always runs first
                order = list(daemons) if r % 2 == 0 else list(daemons)[::-1]
                for k in order:
                    m = run_job(daemons[k], job, fix, work, disk)
                    print("%-6s run %d %s: %s" % (job, r + 1, k, "  ".join(
                        "%s=%.3g" % kv for kv in m.items())), flush=True)
                    results.setdefault(job, {}).setdefault(k, []).append(m)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print("\n%-7s %-11s %10s %10s %8s" % ("job", "metric", "A", "B", "A vs B"))
    for job, per in results.items():
        for metric in ("time_s", "read_MB", "written_MB", "flushes", "cpu_s"):
            med = {k: statistics.median(m[metric] for m in v)
                   for k, v in per.items()}
            line = "%-7s %-11s %10.3f" % (job, metric, med["A"])
            if "B" in med:
                ratio = (med["B"] / med["A"] if metric in ("time_s", "cpu_s")
                         and med["A"] else 0)
                line += " %10.3f" % med["B"]
                if ratio:
                    line += " %7.2fx" % ratio
            print(line)


if __name__ == "__main__":
    main()
