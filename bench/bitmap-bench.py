#!/usr/bin/env python3
"""Write-path cost of dirty bitmaps: NBD 4k random writes on a null-co
node with 0 and with 8 enabled bitmaps (64 KiB granularity), blockd next
to a reference daemon.  Same fio job as nbd-bench.py (iodepth 32, fixed
seed); runs alternate between daemons and medians are reported.

    bench/bitmap-bench.py --daemon build/blockd --vs /usr/bin/qemu-storage-daemon
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Daemon, fio_nbd, print_ab_table  # noqa: E402


def run_once(daemon, work, nbitmaps, runtime, size):
    node = ["--blockdev", "driver=null-co,node-name=disk,size=%d" % size]
    with Daemon(daemon, node, work) as d:
        for i in range(nbitmaps):
            d.qmp.cmd("block-dirty-bitmap-add",
                      {"node": "disk", "name": "b%d" % i,
                       "granularity": 65536})
        job = fio_nbd(d.uri, "randwrite", runtime, size, name="w")
        counts = [b["count"] for n in d.qmp.cmd("query-named-block-nodes")
                  for b in n.get("dirty-bitmaps", [])]
        if nbitmaps and (len(counts) != nbitmaps or min(counts) == 0):
            raise RuntimeError("bitmaps did not record: %r" % counts)
        d.quit()
    return job["write"]["iops"]


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
    print_ab_table(results, 22)


if __name__ == "__main__":
    sys.exit(main())
