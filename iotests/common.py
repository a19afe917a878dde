"""Shared helpers for the numbered iotests.

The runner (iotests/check) passes the programs under test and the scratch
directory through the environment; a test can also be run by hand
(`iotests/001`), in which case the defaults below apply.

Everything a test prints goes through the filters here so that the output
is the same against blockd and against the reference qemu-storage-daemon:
versions, timestamps, pids, scratch paths, generated node names and
filesystem-dependent sizes are replaced by fixed words.
"""

import atexit
import json
import os
import time
import re
import shutil
import subprocess
import sys

import qmp

IOTESTS = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(IOTESTS)


def _default_bin(name):
    for c in (os.path.join(TOP, 'build', name),
              os.path.join(TOP, 'build', 'daemon', name)):
        if os.access(c, os.X_OK):
            return c
    return os.path.join(TOP, 'build', name)


DAEMON = os.environ.get('BLOCKD_DAEMON') or _default_bin('blockd')
IMG = os.environ.get('BLOCKD_IMG') or _default_bin('blockd-img')

# Oracles: always the reference tools, whatever is under test.
QEMU_IMG = os.environ.get('QEMU_IMG', '/usr/bin/qemu-img')
QEMU_IO = os.environ.get('QEMU_IO', '/usr/bin/qemu-io')
QSD = os.environ.get('QSD', '/usr/bin/qemu-storage-daemon')
NBDINFO = os.environ.get('NBDINFO', '/usr/bin/nbdinfo')

TEST = os.path.basename(sys.argv[0])


def _scratch_dir():
    d = os.environ.get('IOTESTS_SCRATCH')
    if not d:
        d = os.path.join(IOTESTS, 'scratch', TEST)
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d, exist_ok=True)
    return os.path.abspath(d)


SCRATCH = _scratch_dir()


def scratch(name):
    return os.path.join(SCRATCH, name)


# -- output -----------------------------------------------------------------

def skip(reason):
    """Skip the whole test, for an honest reason only (a tool missing)."""
    print('SKIP: ' + reason)
    sys.stdout.flush()
    os._exit(77)


def require_tools(*paths):
    for p in paths:
        if not os.access(p, os.X_OK):
            skip('%s not available' % p)


def log(msg, filters=(), indent=None):
    """Print a string or a JSON value (sorted keys), filtered."""
    if isinstance(msg, (dict, list)):
        msg = filter_qmp(msg)
        for f in filters:
            msg = f(msg)
        text = json.dumps(msg, sort_keys=True, indent=indent)
    else:
        text = filter_text(str(msg))
        for f in filters:
            text = f(text)
    print(text)
    sys.stdout.flush()


# -- filters ----------------------------------------------------------------

def filter_text(text):
    text = text.replace(SCRATCH, 'SCRATCH')
    text = re.sub(r'#block\d+', '#blockNNN', text)
    return text


def filter_prog(text, prog=None):
    """The program name that starts a diagnostic line: blockd: / qemu-storage-daemon:"""
    names = [re.escape(os.path.basename(p)) for p in (prog, DAEMON, QSD, IMG, QEMU_IMG) if p]
    names += ['blockd-img', 'blockd', 'qemu-storage-daemon', 'qemu-img']
    return re.sub(r'(^|\n)(%s|\S*/(%s)):' % ('|'.join(names), '|'.join(names)),
                  r'\1PROG:', text)


def filter_pid(text, pid):
    return re.sub(r'\b%d\b' % pid, 'PID', text)


def filter_qmp(obj):
    """Recursively filter a QMP value."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == 'timestamp' and isinstance(v, dict):
                out[k] = {'seconds': 'SECS', 'microseconds': 'USECS'}
            elif k in ('version',) and isinstance(v, dict) and 'qemu' in v:
                out[k] = filter_version(v)
            elif k == 'actual-size' and isinstance(v, int):
                out[k] = 'ACTUAL_SIZE'
            else:
                out[k] = filter_qmp(v)
        if 'qemu' in out and 'package' in out and isinstance(out['qemu'], dict):
            out = filter_version(out)
        return out
    if isinstance(obj, list):
        return [filter_qmp(v) for v in obj]
    if isinstance(obj, str):
        return filter_text(filter_json_filename(obj))
    return obj


def filter_json_filename(s):
    """json:{...} pseudo-filenames: key order inside is not meaningful."""
    if s.startswith('json:'):
        try:
            return 'json:' + json.dumps(json.loads(s[5:]), sort_keys=True)
        except ValueError:
            pass
    return s


def sort_nodes(obj):
    """Sort a query-named-block-nodes reply by node-name: the order of the
    list is not part of the interface."""
    if isinstance(obj, dict) and isinstance(obj.get('return'), list):
        obj = dict(obj)
        obj['return'] = sorted(obj['return'], key=lambda n: str(n.get('node-name')))
    return obj


def node_summary(d):
    """(node-name, drv, ro, virtual-size) of every node, sorted."""
    r = d.cmd('query-named-block-nodes', flat=True)
    return sorted([n['node-name'], n['drv'], n['ro'], n['image']['virtual-size']]
                  for n in r['return'])


def filter_version(v):
    """query-version / greeting version: keep the shape, drop the numbers."""
    q = v.get('qemu', {})
    shape = {k: ('INT' if isinstance(q.get(k), int) else q.get(k))
             for k in ('major', 'minor', 'micro')}
    return {'qemu': shape,
            'package': 'PACKAGE' if isinstance(v.get('package'), str) else v.get('package')}


def filter_qemu_io(text):
    """qemu-io timing lines carry rates that change from run to run."""
    # "0.00 sec" under a second, "0:00:01.00" (no "sec") from one second on
    text = re.sub(r'\d+(\.\d+)? (bytes|[KMGT]iB), \d+ ops; [\d:.]+( sec)? \([^)]*\)',
                  'X ops; TIMING', text)
    return filter_text(text)


def filter_img_info(text):
    """qemu-img info: disk size depends on the filesystem."""
    text = re.sub(r'(?m)^disk size: .*$', 'disk size: SIZE', text)
    text = re.sub(r'"actual-size": \d+', '"actual-size": ACTUAL_SIZE', text)
    return filter_text(text)


# -- the daemon under test ----------------------------------------------------

_daemons = []


def start_daemon(*args, binary=None, name='qmp', monitor=True, negotiate=True):
    """Start the daemon under test (or binary) in SCRATCH with extra args."""
    d = qmp.Daemon(binary or DAEMON, SCRATCH, args, monitor=monitor, name=name,
                   negotiate=negotiate)
    _daemons.append(d)
    return d


def check_sanitizers(d):
    rep = d.sanitizer_report()
    if rep:
        print('SANITIZER REPORT from %s (see %s)' % (os.path.basename(d.binary),
                                                    filter_text(d.stderr_path)))
        sys.stderr.write(rep)


def _cleanup():
    for d in _daemons:
        if d.returncode is None:
            d.stop()
        check_sanitizers(d)
    sys.stdout.flush()


atexit.register(_cleanup)


def qmp_log(d_or_client, name, args=None, /, filters=(), indent=None, **kwargs):
    """Run a command, print the command and its filtered reply; return the reply."""
    c = d_or_client.qmp if isinstance(d_or_client, qmp.Daemon) else d_or_client
    arguments = dict(args or {})
    for k, v in kwargs.items():
        arguments[k.replace('_', '-')] = v
    req = {'execute': name}
    if arguments:
        req['arguments'] = arguments
    log(req, filters)
    reply = c.cmd(name, arguments)
    if name == 'block-export-del':
        reply = _retry_export_del(c, arguments, reply)
    log(reply, filters, indent=indent)
    return reply


def wait_listening(path, timeout=10.0):
    """Wait until a UNIX socket at path accepts connections (the file
    appears at bind(), a moment before listen())."""
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.025)


def run_after_kill(argv, timeout=10.0):
    """run(argv) on an image a SIGKILLed daemon held.  The kernel tears a
    killed process's io_uring down asynchronously, so its file (and its OFD
    lock) may outlive the process for a moment: retry while the output
    says the image is locked."""
    deadline = time.monotonic() + timeout
    while True:
        rc, out = run(argv)
        if 'lock' not in out or time.monotonic() >= deadline:
            return rc, out
        time.sleep(0.05)


def _retry_export_del(c, arguments, reply, timeout=10.0):
    # A client program that just exited may not have been seen to
    # disconnect yet (both daemons answer "still in use" until then):
    # give the server a moment, as a script that knows its clients are
    # gone would.
    deadline = time.monotonic() + timeout
    while ('still in use' in reply.get('error', {}).get('desc', '')
           and time.monotonic() < deadline):
        time.sleep(0.05)
        reply = c.cmd('block-export-del', arguments)
    return reply


def event_log(client, name=None, timeout=10.0):
    c = client.qmp if isinstance(client, qmp.Daemon) else client
    ev = c.get_event(name, timeout=timeout)
    log(ev)
    return ev


# -- external tools -------------------------------------------------------------

def run(argv, check=False, input=None, timeout=60):
    """Run a program, return (exit code, stdout+stderr text)."""
    p = subprocess.run(argv, stdin=subprocess.DEVNULL if input is None else None,
                       input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    out = p.stdout.decode(errors='replace')
    if check and p.returncode != 0:
        raise RuntimeError('%s failed (%d): %s' % (argv, p.returncode, out))
    return p.returncode, out


def qemu_io(*args, fmt='raw'):
    """Run the reference qemu-io; print its filtered output."""
    argv = [QEMU_IO]
    if fmt:
        argv += ['-f', fmt]
    rc, out = run(argv + list(args))
    for line in filter_qemu_io(out).splitlines():
        print(line)
    if rc != 0:
        print('qemu-io exit code %d' % rc)
    sys.stdout.flush()
    return rc


def qemu_img(*args, filters=(filter_img_info,), show=True):
    """Run the reference qemu-img; print (filtered) output."""
    rc, out = run([QEMU_IMG] + list(args))
    if show:
        for f in filters:
            out = f(out)
        out = filter_prog(out)
        for line in out.splitlines():
            print(line)
        if rc != 0:
            print('qemu-img exit code %d' % rc)
        sys.stdout.flush()
    return rc, out


def nbd_uri(sock, export=''):
    return 'nbd+unix:///%s?socket=%s' % (export, sock)


def make_raw(path, size, pattern=None):
    """A raw image of size bytes; pattern fills it with one byte value."""
    with open(path, 'wb') as f:
        if pattern is None:
            f.truncate(size)
        else:
            chunk = bytes([pattern]) * min(size, 1 << 20)
            left = size
            while left:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
    return path


def unix_addr(path):
    """SocketAddressLegacy of a UNIX socket, as nbd-server-start wants it."""
    return {'type': 'unix', 'data': {'path': path}}
