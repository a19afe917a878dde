"""Shared pieces of the bench/*.py scripts (Python stdlib only).

A daemon under test (blockd or qemu-storage-daemon, same command line)
started with a QMP socket and one writable NBD export `disk` of the node
`disk`; a small QMP client; fio's nbd engine with the fixed job every
script uses (4k, iodepth 32, fixed seed); sizes and data files.
"""
import json
import statistics
import os
import socket
import subprocess
import time

# How files are opened for the benchmarks, as ../shared/bench/bench.py does.
FILE_OPTS = "cache.direct=on,aio=io_uring"


def parse_size(text):
    """'64M', '1G' or a plain byte count."""
    if text[-1] in "MG":
        return int(text[:-1]) << {"M": 20, "G": 30}[text[-1]]
    return int(text)


def write_random_file(path, size):
    """A fully allocated file of `size` bytes (whole MiBs) of random data."""
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)


class Qmp:
    """A QMP connection on a UNIX socket, greeting read."""

    def __init__(self, path, proc, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("daemon exited with %d" % proc.returncode)
            if os.path.exists(path):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(path)
                except OSError:
                    s.close()
                    time.sleep(0.02)
                    continue
                self.sock = s
                self.file = s.makefile("rwb")
                self.file.readline()  # greeting
                return
            time.sleep(0.02)
        raise RuntimeError("no socket at %s" % path)

    def cmd(self, name, args=None):
        """Run a command; its return value, RuntimeError on an error."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:  # skip events
            line = self.file.readline()
            if not line:
                raise RuntimeError("%s: connection closed" % name)
            r = json.loads(line)
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"]["desc"]))

    def close(self):
        self.file.close()
        self.sock.close()


class Daemon:
    """`binary` with `node_args`, QMP at work/qmp.sock (capabilities
    negotiated) and the NBD export `disk` at work/nbd.sock (self.uri).
    As a context manager it kills the daemon if it is still running."""

    def __init__(self, binary, node_args, work):
        qsock = os.path.join(work, "qmp.sock")
        nsock = os.path.join(work, "nbd.sock")
        for p in (qsock, nsock):
            if os.path.exists(p):
                os.unlink(p)
        argv = [binary] + list(node_args) + [
            "--chardev", "socket,path=%s,server=on,wait=off,id=qmp0" % qsock,
            "--monitor", "chardev=qmp0",
            "--nbd-server", "addr.type=unix,addr.path=%s" % nsock,
            "--export",
            "type=nbd,id=exp0,node-name=disk,name=disk,writable=on"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.uri = "nbd+unix:///disk?socket=%s" % nsock
        try:
            self.qmp = Qmp(qsock, self.proc)
            self.qmp.cmd("qmp_capabilities")
        except BaseException:
            self.kill()
            raise

    def quit(self, timeout=30):
        """QMP quit, then wait for the process to end."""
        self.qmp.cmd("quit")
        self.qmp.close()
        self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        return False


def fio_nbd(uri, rw, runtime, size, name=None, timeout_slack=60):
    """fio's nbd engine on `uri`: 4k, iodepth 32, time based, fixed seed.
    Returns fio's JSON job (job["read"|"write"]["iops"])."""
    out = subprocess.run(
        ["fio", "--output-format=json", "--ioengine=nbd", "--uri=" + uri,
         "--name=" + (name or rw), "--rw=" + rw, "--bs=4k", "--iodepth=32",
         "--direct=1", "--time_based", "--runtime=%d" % runtime,
         "--size=%d" % size, "--norandommap", "--randrepeat=1",
         "--randseed=4242"],
        capture_output=True, text=True, timeout=runtime + timeout_slack)
    if out.returncode != 0:
        raise RuntimeError("fio failed: %s" % out.stderr[-400:])
    job = json.loads(out.stdout[out.stdout.find("{"):])["jobs"][0]
    if job.get("error"):
        raise RuntimeError("fio job error %s" % job["error"])
    return job


def print_ab_table(results, width):
    """Medians per workload: results[key] = {"A": [iops...], "B": [...]}
    (B when a reference daemon ran), with the A/B ratio."""
    print("\n%-*s %12s %12s %8s" % (width, "workload", "A (IOPS)",
                                    "B (IOPS)", "A/B"))
    for key, per in results.items():
        a = statistics.median(per["A"])
        if "B" in per:
            b = statistics.median(per["B"])
            print("%-*s %12.0f %12.0f %8.2f" % (width, key, a, b, a / b))
        else:
            print("%-*s %12.0f" % (width, key, a))
