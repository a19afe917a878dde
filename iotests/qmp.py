"""A small QMP client and a daemon launcher for the iotests.

Python 3 standard library only.  Works against blockd and against the
reference qemu-storage-daemon: the Daemon class uses only command-line
options both understand.
"""

import json
import os
import signal
import socket
import subprocess
import time


class QMPError(Exception):
    pass


class QMPTimeout(QMPError):
    pass


class QMPClosed(QMPError):
    pass


class QMPClient:
    """One connection to a QMP monitor socket.

    Messages from the server are a stream of JSON objects; replies and events
    may interleave, so events read while waiting for a reply are queued and
    handed out by get_event().
    """

    def __init__(self, path, timeout=10.0, negotiate=True, connect_timeout=10.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self._buf = b''
        self._decoder = json.JSONDecoder()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.greeting = None
        if negotiate is not None:
            self.greeting = self.recv_msg()
            if negotiate:
                reply = self.cmd('qmp_capabilities')
                if 'return' not in reply:
                    raise QMPError('negotiation failed: %r' % reply)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw transport ------------------------------------------------------

    def send_raw(self, data):
        """Send bytes (or str) exactly as given: for framing and malformed-input tests."""
        if isinstance(data, str):
            data = data.encode()
        # recv_msg() leaves a short timeout on the socket; a large send to a
        # busy server needs longer.
        self.sock.settimeout(max(self.timeout, 60.0))
        self.sock.sendall(data)

    def _next_buffered(self):
        text = self._buf.lstrip()
        if not text:
            self._buf = b''
            return None
        try:
            s = text.decode()
        except UnicodeDecodeError:
            return None  # partial UTF-8 sequence: wait for more
        try:
            obj, end = self._decoder.raw_decode(s)
        except json.JSONDecodeError:
            return None
        self._buf = s[end:].encode()
        return obj

    def recv_msg(self, timeout=None):
        """Next message from the server (reply or event), or QMPTimeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            obj = self._next_buffered()
            if obj is not None:
                return obj
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPTimeout('no message within %.1fs' % timeout)
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise QMPTimeout('no message within %.1fs' % timeout) from None
            except ConnectionResetError:
                data = b''
            if not data:
                raise QMPClosed('connection closed by the server')
            self._buf += data

    def recv_reply(self, timeout=None):
        """Next non-event message; events seen on the way are queued."""
        while True:
            msg = self.recv_msg(timeout)
            if 'event' in msg:
                self.events.append(msg)
                continue
            return msg

    # -- commands -----------------------------------------------------------

    def cmd_obj(self, obj, timeout=None):
        """Send one command object as given and return its reply."""
        self.send_raw(json.dumps(obj) + '\n')
        return self.recv_reply(timeout)

    def cmd(self, name, args=None, /, **kwargs):
        """Run a command.  Arguments come as a dict or as keyword arguments
        (underscores become dashes: node_name= is node-name)."""
        arguments = dict(args or {})
        for k, v in kwargs.items():
            arguments[k.replace('_', '-')] = v
        return self.execute(name, arguments)

    def execute(self, name, arguments=None, id=None, timeout=None):
        """Run a command with an optional id and reply timeout."""
        obj = {'execute': name}
        if arguments:
            obj['arguments'] = arguments
        if id is not None:
            obj['id'] = id
        return self.cmd_obj(obj, timeout)

    # -- events -------------------------------------------------------------

    def get_event(self, name=None, timeout=None):
        """Return the first queued or incoming event (named name, if given),
        or raise QMPTimeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if name is None or ev['event'] == name:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPTimeout('no event %s within %.1fs' % (name or '', timeout))
            msg = self.recv_msg(remaining)
            if 'event' not in msg:
                raise QMPError('unexpected reply while waiting for an event: %r' % msg)
            self.events.append(msg)

    def drain_events(self, timeout=0.2):
        """Read whatever events arrive within timeout (or until the server
        closes the connection) and return all queued."""
        try:
            while True:
                msg = self.recv_msg(timeout)
                if 'event' not in msg:
                    raise QMPError('unexpected reply: %r' % msg)
                self.events.append(msg)
        except (QMPTimeout, QMPClosed):
            pass
        evs, self.events = self.events, []
        return evs


SANITIZER_MARKERS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer',
                     'runtime error:', 'ERROR: ThreadSanitizer',
                     'ERROR: MemorySanitizer')


class Daemon:
    """The daemon under test, started in a scratch directory.

    args are extra qsd-compatible command-line arguments.  When monitor is
    true a QMP monitor on SCRATCH/<name>.sock is added and a negotiated client
    is available as .qmp.
    """

    def __init__(self, binary, scratch, args=(), monitor=True, name='qmp',
                 negotiate=True, start_timeout=10.0):
        self.binary = binary
        self.scratch = scratch
        self.name = name
        self.qmp_path = os.path.join(scratch, name + '.sock')
        self.qmp = None
        self.stderr_path = os.path.join(scratch, name + '.stderr')
        self.returncode = None
        self._stderr_text = None
        full = [binary]
        if monitor:
            full += ['--chardev', 'socket,id=%s_mon,path=%s,server=on,wait=off'
                     % (name, self.qmp_path),
                     '--monitor', 'chardev=%s_mon' % name]
        full += list(args)
        self.argv = full
        if os.path.exists(self.qmp_path):
            os.unlink(self.qmp_path)
        self._stderr_file = open(self.stderr_path, 'wb')
        self.proc = subprocess.Popen(full, stdin=subprocess.DEVNULL,
                                     stdout=self._stderr_file,
                                     stderr=self._stderr_file,
                                     cwd=scratch)
        if monitor:
            deadline = time.monotonic() + start_timeout
            while not os.path.exists(self.qmp_path):
                if self.proc.poll() is not None:
                    self._finish()
                    raise QMPError('daemon exited with %d before its monitor '
                                   'appeared: %s' % (self.proc.returncode,
                                                     self.stderr().strip()))
                if time.monotonic() > deadline:
                    self.kill()
                    raise QMPError('daemon monitor did not appear')
                time.sleep(0.01)
            self.qmp = QMPClient(self.qmp_path, negotiate=negotiate)

    @property
    def pid(self):
        return self.proc.pid

    def connect(self, negotiate=True, **kw):
        """A further client on the same monitor socket."""
        return QMPClient(self.qmp_path, negotiate=negotiate, **kw)

    def cmd(self, name, args=None, /, **kwargs):
        return self.qmp.cmd(name, args, **kwargs)

    def alive(self):
        return self.proc.poll() is None

    def _finish(self):
        if not self._stderr_file.closed:
            self._stderr_file.close()
        self.returncode = self.proc.returncode

    def wait(self, timeout=10.0):
        """Wait for the process to exit by itself; returns its exit code."""
        self.proc.wait(timeout)
        self._finish()
        if self.qmp:
            self.qmp.close()
        return self.returncode

    def stop(self, timeout=5.0):
        """quit over QMP, then SIGTERM, then SIGKILL; reap; return the exit code."""
        if self.proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.execute('quit', timeout=timeout)
            except (QMPError, OSError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                self.proc.send_signal(sig)
        self.proc.wait()
        if self.qmp:
            self.qmp.close()
        self._finish()
        return self.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.qmp:
            self.qmp.close()
        self._finish()

    def stderr(self):
        with open(self.stderr_path, 'rb') as f:
            return f.read().decode(errors='replace')

    def sanitizer_report(self):
        """The daemon's stderr if it carries a sanitizer report, else None."""
        text = self.stderr()
        if any(m in text for m in SANITIZER_MARKERS):
            return text
        return None
