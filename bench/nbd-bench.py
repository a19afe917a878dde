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
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import FILE_OPTS, Daemon, fio_nbd, parse_size  # noqa: E402
from benchlib import print_ab_table, write_random_file  # noqa: E402


def run_once(daemon, node_args, workdir, rw, runtime, size):
    with Daemon(daemon, node_args, workdir) as d:
        job = fio_nbd(d.uri, rw, runtime, size)
        d.quit()
    side = job["read"] if rw.endswith("read") else job["write"]
    return side["iops"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--vs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--rw", default="randread,randwrite",
                    help="comma-separated fio patterns (default both)")
    ap.add_argument("--setup", default="null-co,raw-file",
                    help="comma-separated node setups (default both)")
    args = ap.parse_args()
    size = parse_size(args.size)

    daemons = [("A", args.daemon)] + ([("B", args.vs)] if args.vs else [])
    work = tempfile.mkdtemp(prefix="nbd-bench.", dir=args.workdir)
    try:
        raw = os.path.join(work, "disk.raw")
        write_random_file(raw, size)  # like bench.py's full.raw
        setups = {
            "null-co": ["--blockdev",
                        "driver=null-co,node-name=disk,size=%d" % size],
            "raw-file": ["--blockdev", "driver=file,node-name=disk-file,"
                         "filename=%s,%s" % (raw, FILE_OPTS),
                         "--blockdev", "driver=raw,node-name=disk,file=disk-file"],
        }
        results = {}
        for setup, node_args in setups.items():
            if setup not in args.setup.split(","):
                continue
            for rw in args.rw.split(","):
                key = "%s %s" % (setup, rw)
                results[key] = {name: [] for name, _ in daemons}
                for _ in range(args.runs):
                    for name, daemon in daemons:
                        iops = run_once(daemon, node_args, work, rw,
                                        args.runtime, size)
                        results[key][name].append(iops)
                        print("%-20s %s %10.0f IOPS" % (key, name, iops),
                              flush=True)
        print_ab_table(results, 20)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
