#!/usr/bin/env python3
"""NBD 4k random writes: add-cow over a raw backing file vs plain raw vs qcow2.

Modelled on bench/nbd-bench.py (same fio job: 4k, iodepth 32, fixed seed,
fio's nbd engine; files opened with O_DIRECT and io_uring).  Every run
starts from fresh images over the same fully allocated raw backing file:

  raw          the backing file itself, written in place (the baseline)
  add-cow      add-cow over it (empty raw image file, 64 KiB clusters):
               first writes allocate (copy-on-write of the rest of the
               cluster, image flush, bitmap block write)
  qcow2        qcow2 (64 KiB clusters) over the same backing file

Each workload runs "fresh" (allocating writes, new images) and then
"rewrite" (the same seed again on the now-allocated images).  Runs
alternate setups; medians are reported.

    bench/add-cow-bench.py --daemon build/blockd [--size 1G --runtime 10]
    bench/add-cow-bench.py --daemon build/blockd --workdir /dev/shm --no-direct
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import Daemon, fio_nbd, parse_size  # noqa: E402
from benchlib import write_random_file  # noqa: E402

FILE_OPTS = benchlib.FILE_OPTS


def run(daemon, node_args, work, runtime, size):
    with Daemon(daemon, node_args, work) as d:
        fresh = fio_nbd(d.uri, "randwrite", runtime, size, name="w",
                        timeout_slack=120)["write"]["iops"]
        again = fio_nbd(d.uri, "randwrite", runtime, size, name="w",
                        timeout_slack=120)["write"]["iops"]
        d.quit(timeout=60)
    return fresh, again


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--img", help="blockd-img (default: next to --daemon)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--no-direct", action="store_true",
                    help="cache.direct=off (for tmpfs: the software path "
                    "without disk latency)")
    args = ap.parse_args()
    global FILE_OPTS
    if args.no_direct:
        FILE_OPTS = "cache.direct=off,aio=io_uring"
    size = parse_size(args.size)
    img = args.img or os.path.join(os.path.dirname(args.daemon), "blockd-img")

    work = tempfile.mkdtemp(prefix="add-cow-bench.", dir=args.workdir)
    try:
        master = os.path.join(work, "master.raw")
        write_random_file(master, size)
        base = os.path.join(work, "base.raw")
        data = os.path.join(work, "data.raw")
        meta = os.path.join(work, "disk.acow")
        q = os.path.join(work, "disk.qcow2")

        def fresh(setup):
            for p in (data, meta, q):
                if os.path.exists(p):
                    os.unlink(p)
            if setup == "raw":
                shutil.copyfile(master, base)
                return ["--blockdev", "driver=file,node-name=f,filename=%s,%s"
                        % (base, FILE_OPTS),
                        "--blockdev", "driver=raw,node-name=disk,file=f"]
            if not os.path.exists(base) or setup == "add-cow":
                shutil.copyfile(master, base)
            backing = ("--blockdev", "driver=file,node-name=bf,filename=%s,"
                       "read-only=on,%s" % (base, FILE_OPTS),
                       "--blockdev", "driver=raw,node-name=b,file=bf,"
                       "read-only=on")
            if setup == "add-cow":
                open(data, "wb").close()
                subprocess.run([img, "create", "-q", "-f", "add-cow", "-o",
                                "backing_file=%s,backing_fmt=raw,"
                                "image_file=%s" % (base, data), meta],
                               check=True)
                return list(backing) + [
                    "--blockdev", "driver=file,node-name=m,filename=%s,%s"
                    % (meta, FILE_OPTS),
                    "--blockdev", "driver=file,node-name=d,filename=%s,%s"
                    % (data, FILE_OPTS),
                    "--blockdev", "driver=raw,node-name=i,file=d",
                    "--blockdev", "driver=add-cow,node-name=disk,file=m,"
                    "image=i,backing=b"]
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                            base, "-F", "raw", q], check=True)
            return list(backing) + [
                "--blockdev", "driver=file,node-name=qf,filename=%s,%s"
                % (q, FILE_OPTS),
                "--blockdev", "driver=qcow2,node-name=disk,file=qf,backing=b"]

        setups = ("raw", "add-cow", "qcow2")
        results = {s: ([], []) for s in setups}
        for _ in range(args.runs):
            for s in setups:
                f, a = run(args.daemon, fresh(s), work, args.runtime, size)
                results[s][0].append(f)
                results[s][1].append(a)
                print("%-8s fresh %10.0f IOPS   rewrite %10.0f IOPS" % (s, f, a),
                      flush=True)
        print("\n%-10s %14s %14s" % ("setup", "fresh (IOPS)", "rewrite (IOPS)"))
        for s in setups:
            print("%-10s %14.0f %14.0f" % (s, statistics.median(results[s][0]),
                                          statistics.median(results[s][1])))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
