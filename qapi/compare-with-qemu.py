#!/usr/bin/env python3
"""Compare blockd's schema with qemu-storage-daemon's, structurally.

usage: compare-with-qemu.py BUILD/qapi/qapi-schema.json [QSD-BINARY]

Starts the reference daemon on a temporary QMP socket, reads its
query-qmp-schema and, for every command and event of ours, walks both
type graphs side by side (QEMU masks type names, so types are matched by
position: member by member, branch by branch).  Prints one line per
difference: member lists, optionality, features, enum values, union tags
and variants, allow-oob.  Differences blockd intends (enums listing only
what it implements) show up too; docs/qapi-codegen.md lists them.
Exit status: 0 when nothing differs, 1 otherwise.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def qsd_schema(binary):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'qmp.sock')
        proc = subprocess.Popen(
            [binary, '--chardev',
             'socket,id=c,path=%s,server=on,wait=off' % path,
             '--monitor', 'chardev=c'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if os.path.exists(path):
                    break
                time.sleep(0.05)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            f = sock.makefile('rw')
            json.loads(f.readline())  # greeting
            for cmd in ('qmp_capabilities', 'query-qmp-schema'):
                f.write(json.dumps({'execute': cmd}) + '\n')
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if 'event' not in reply:
                        break
            sock.close()
            return reply['return']
        finally:
            proc.terminate()
            proc.wait()


class Comparer:
    def __init__(self, ours, ref):
        self.ours = {e['name']: e for e in ours}
        self.ref = {e['name']: e for e in ref}
        self.seen = set()
        self.diffs = []

    def diff(self, path, msg):
        self.diffs.append('%s: %s' % (path, msg))

    def cmp(self, a, b, path):
        if (a, b) in self.seen:
            return
        self.seen.add((a, b))
        ea, eb = self.ours.get(a), self.ref.get(b)
        if ea is None or eb is None:
            self.diff(path, 'no entry %s / %s' % (a, b))
            return
        mt = ea['meta-type']
        if mt != eb['meta-type']:
            self.diff(path, 'meta-type %s, QEMU %s' % (mt, eb['meta-type']))
            return
        if ea.get('features', []) != eb.get('features', []):
            self.diff(path, 'features %s, QEMU %s'
                      % (ea.get('features'), eb.get('features')))
        if mt == 'builtin':
            if a != b:
                self.diff(path, 'type %s, QEMU %s' % (a, b))
        elif mt == 'enum':
            if ea['values'] != eb['values']:
                self.diff(path, 'values %s, QEMU %s'
                          % (ea['values'], eb['values']))
        elif mt == 'array':
            self.cmp(ea['element-type'], eb['element-type'], path + '[]')
        elif mt == 'alternate':
            ta = [m['type'] for m in ea['members']]
            tb = [m['type'] for m in eb['members']]
            if len(ta) != len(tb):
                self.diff(path, '%d branches, QEMU %d' % (len(ta), len(tb)))
            for x, y in zip(ta, tb):
                self.cmp(x, y, path + '|')
        elif mt == 'object':
            self.cmp_object(ea, eb, path)
        else:
            self.cmp(ea['arg-type'], eb['arg-type'], path + '(arg)')
            if mt == 'command':
                self.cmp(ea['ret-type'], eb['ret-type'], path + '(ret)')
                if ea.get('allow-oob') != eb.get('allow-oob'):
                    self.diff(path, 'allow-oob differs')

    def cmp_object(self, ea, eb, path):
        ma = {m['name']: m for m in ea['members']}
        mb = {m['name']: m for m in eb['members']}
        if list(ma) != list(mb):
            self.diff(path, 'members %s, QEMU %s' % (list(ma), list(mb)))
        for k, m in ma.items():
            if k not in mb:
                continue
            p = path + '.' + k
            if ('default' in m) != ('default' in mb[k]):
                self.diff(p, 'optionality differs')
            if m.get('features', []) != mb[k].get('features', []):
                self.diff(p, 'features %s, QEMU %s'
                          % (m.get('features'), mb[k].get('features')))
            self.cmp(m['type'], mb[k]['type'], p)
        if ea.get('tag') != eb.get('tag'):
            self.diff(path, 'tag %s, QEMU %s' % (ea.get('tag'), eb.get('tag')))
        va = {v['case']: v['type'] for v in ea.get('variants', [])}
        vb = {v['case']: v['type'] for v in eb.get('variants', [])}
        for k, t in va.items():
            if k not in vb:
                self.diff(path, 'variant %s not in QEMU' % k)
            else:
                self.cmp(t, vb[k], '%s{%s}' % (path, k))

    def run(self):
        for name, e in self.ours.items():
            if e['meta-type'] not in ('command', 'event'):
                continue
            if name not in self.ref:
                self.diff(name, 'not in QEMU')
                continue
            self.cmp(name, name, name)
        return self.diffs


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1], encoding='utf-8') as f:
        ours = json.load(f)
    ref = qsd_schema(argv[2] if len(argv) == 3 else 'qemu-storage-daemon')
    diffs = Comparer(ours, ref).run()
    for d in diffs:
        print(d)
    return 1 if diffs else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
