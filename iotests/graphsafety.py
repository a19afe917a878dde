"""Graph safety while a job runs (iotests 117-119).

A chain base <- mid <- top of qcow2 images with distinct data in each
layer, and a target image.  A job is started slowly (`speed`) and paused, then every
operation that would detach or replace an edge of the graph it works on
is tried: blockdev-del of each node, blockdev-reopen that changes a
`backing` link, blockdev-snapshot on the chain, and other jobs on an
overlapping chain.  Each reply is printed (the refusals carry QEMU's
words); an operation the reference allows is undone so the next one sees
the same graph.  Then the job is let go at full speed and must complete,
and the images must hold what they should.
"""
import common
from common import log, qmp_log, scratch

MiB = 1024 * 1024
SIZE = 8 * MiB
SLOW = 1024 * 1024  # bytes/s: the job cannot finish before it is paused

PATTERNS = {'base': (0x11, 0, 8 * MiB), 'mid': (0x22, 1 * MiB, 5 * MiB),
            'top': (0x33, 2 * MiB, 2 * MiB)}


def make_chain():
    """base <- mid <- top, and tgt (empty, same size)."""
    paths = {n: scratch(n + '.qcow2') for n in ('base', 'mid', 'top', 'tgt',
                                                 'tgt2', 'snap')}
    common.qemu_img('create', '-f', 'qcow2', paths['base'], str(SIZE),
                    show=False)
    common.qemu_img('create', '-f', 'qcow2', '-b', paths['base'], '-F',
                    'qcow2', paths['mid'], show=False)
    common.qemu_img('create', '-f', 'qcow2', '-b', paths['mid'], '-F',
                    'qcow2', paths['top'], show=False)
    for n in ('tgt', 'tgt2', 'snap'):
        common.qemu_img('create', '-f', 'qcow2', paths[n], str(SIZE),
                        show=False)
    for n, (pat, off, length) in PATTERNS.items():
        common.run([common.QEMU_IO, '-f', 'qcow2', '-c',
                    'write -P %d %d %d' % (pat, off, length), paths[n]],
                   check=True)
    # What the top of the chain reads, for the checks at the end.
    expected = scratch('expected.raw')
    common.qemu_img('convert', '-O', 'raw', paths['top'], expected,
                    show=False)
    return paths, expected


class Scenario:
    def __init__(self, title):
        log('')
        log('##### ' + title)
        self.paths, self.expected = make_chain()
        self.d = common.start_daemon()
        for n in ('base', 'mid', 'top', 'tgt', 'tgt2'):
            args = {'driver': 'qcow2', 'node-name': n,
                    'file': {'driver': 'file', 'filename': self.paths[n],
                             'node-name': n + '-file'}}
            if n == 'mid':
                args['backing'] = 'base'
            elif n == 'top':
                args['backing'] = 'mid'
            elif n in ('tgt', 'tgt2'):
                args['backing'] = None
            self.q('blockdev-add', args, quiet=True)
        self.jobs = []

    def q(self, cmd, args=None, quiet=False, **kw):
        args = dict(args or {})
        for k, v in kw.items():
            args[k.replace('_', '-')] = v
        if quiet:
            r = self.d.cmd(cmd, args)
            if 'error' in r:
                log(r)
            return r
        return qmp_log(self.d, cmd, args)

    def start(self, cmd, **kw):
        kw.setdefault('speed', SLOW)
        r = self.q(cmd, **kw)
        if 'return' in r:
            self.jobs.append(kw['job_id'])
        return r

    def start_paused(self, cmd, **kw):
        """Start a job and pause it (so nothing depends on timing: a drain
        of the graph need not wait for a rate-limited request)."""
        r = self.start(cmd, **kw)
        self.d.cmd('job-pause', {'id': kw['job_id']})
        while True:
            ev = self.d.qmp.get_event(timeout=60)
            data = ev.get('data', {})
            if (ev['event'] == 'JOB_STATUS_CHANGE' and
                    data.get('id') == kw['job_id'] and
                    data.get('status') == 'paused'):
                break
        return r

    def reopen(self, node, backing, file=None, quiet=False):
        opts = {'driver': 'qcow2', 'node-name': node,
                'file': file or node + '-file', 'backing': backing}
        return self.q('blockdev-reopen', {'options': [opts]}, quiet=quiet)

    def chain_ops(self, other_jobs=True):
        """Everything that would change the graph a chain job holds."""
        log('--- deleting nodes')
        for n in ('top', 'mid', 'base', 'tgt', 'top-file', 'base-file'):
            self.q('blockdev-del', node_name=n)
        log('--- changing backing links')
        for node, backing, back in (('top', 'base', 'mid'),
                                    ('top', None, 'mid'),
                                    ('mid', None, 'base'),
                                    ('mid', 'tgt2', 'base')):
            r = self.reopen(node, backing)
            if 'return' in r:
                # allowed: put the link back for the next try
                self.reopen(node, back, quiet=True)
        if other_jobs:
            log('--- other jobs on the chain')
            for cmd, kw in (
                    ('block-commit', dict(job_id='o1', device='top',
                                          top_node='mid', base_node='base')),
                    ('block-commit', dict(job_id='o2', device='top')),
                    ('block-stream', dict(job_id='o3', device='top',
                                          base_node='base')),
                    ('block-stream', dict(job_id='o4', device='mid')),
                    ('blockdev-mirror', dict(job_id='o5', device='top',
                                             target='tgt2', sync='full')),
                    ('blockdev-backup', dict(job_id='o6', device='mid',
                                             target='tgt2', sync='full'))):
                r = self.start(cmd, **kw)
                if 'return' in r:
                    # allowed: let it go away again before the next try
                    self.cancel(kw['job_id'])
        log('--- snapshots on the chain')
        self.q('blockdev-add', {'driver': 'qcow2', 'node-name': 'snap',
                                'file': {'driver': 'file',
                                         'filename': self.paths['snap']},
                                'backing': None}, quiet=True)
        for n in ('mid', 'top'):
            r = self.q('blockdev-snapshot', node=n, overlay='snap')
            if 'return' in r:
                log('(allowed: snap is now above %s)' % n)
                return
        self.q('blockdev-del', node_name='snap', quiet=True)

    def cancel(self, job_id):
        self.d.cmd('block-job-set-speed', {'device': job_id, 'speed': 0})
        self.d.cmd('job-cancel', {'id': job_id})
        self.wait_ended([job_id], show=False)

    def wait_ended(self, ids, show=True, complete=()):
        """Until every job in ids has ended; prints one line each."""
        left = set(ids)
        ended = {}
        while left:
            ev = self.d.qmp.get_event(timeout=120)
            data = ev.get('data', {})
            if ev['event'] == 'BLOCK_JOB_READY' and data['device'] in complete:
                self.d.cmd('job-complete', {'id': data['device']})
            if ev['event'] in ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'):
                ended[data['device']] = '%s %s error=%s' % (
                    data['device'], ev['event'], data.get('error'))
            if (ev['event'] == 'JOB_STATUS_CHANGE' and
                    data.get('status') == 'null' and data['id'] in left):
                left.discard(data['id'])
        if show:
            for k in sorted(ended):
                log(ended[k])
        for k in ids:
            if k in self.jobs:
                self.jobs.remove(k)

    def finish(self, job_id, complete=False):
        """Full speed; complete it when ready (mirror, active commit)."""
        log('--- the job goes on')
        self.q('block-job-set-speed', device=job_id, speed=0)
        self.q('job-resume', id=job_id)
        self.wait_ended([job_id], complete=[job_id] if complete else [])

    def summary(self):
        """Each node's backing node, as the graph now is."""
        r = self.d.cmd('query-named-block-nodes')
        for n in sorted(r['return'], key=lambda n: n['node-name']):
            if n['drv'] == 'file':
                continue
            img = n['image']
            back = img.get('backing-image', {}).get('filename')
            log('%s: %s backing %s' % (
                n['node-name'], common.filter_text(img['filename']),
                common.filter_text(back) if back else None))

    def check_image(self, name, equals_expected=True):
        """After the daemon stopped: qemu-img check, and the content."""
        p = self.paths[name]
        rc, out = common.run([common.QEMU_IMG, 'check', p])
        log('check %s: %s' % (name, 'clean' if rc == 0 else out))
        if equals_expected:
            rc, out = common.run([common.QEMU_IMG, 'compare', '-f', 'qcow2',
                                  '-F', 'raw', p, self.expected])
            log('%s reads as the chain did: %s' % (name, rc == 0))

    def stop(self):
        self.d.stop()
