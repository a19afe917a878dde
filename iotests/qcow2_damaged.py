"""A corpus of qcow2 images with a few bytes changed in a known structure
(iotests 070-072): each made by the reference qemu-img/qemu-io, then edited
in place at offsets read from its own header and tables."""
import os
import struct

import common
from common import run

OFF_MASK = 0x00fffffffffffe00
COPIED = 1 << 63


def _be64(f, off):
    f.seek(off)
    return struct.unpack('>Q', f.read(8))[0]


def _put64(f, off, v):
    f.seek(off)
    f.write(struct.pack('>Q', v))


def _put16(f, off, v):
    f.seek(off)
    f.write(struct.pack('>H', v))


def base(path, opts='cluster_size=65536', writes=None):
    run([common.QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-o', opts,
         path, '16M'], check=True)
    cmds = []
    for w in writes or ['write -P 0x11 0 192k', 'write -P 0x22 4M 64k',
                        'write -P 0x33 9M 64k']:
        cmds += ['-c', w]
    run([common.QEMU_IO, '-f', 'qcow2'] + cmds + [path], check=True)


class Image:
    """Offsets of the structures of a fresh 64k-cluster, 16-bit image."""

    def __init__(self, f):
        self.f = f
        f.seek(0)
        h = f.read(104)
        self.l1 = struct.unpack('>Q', h[40:48])[0]
        self.rt = struct.unpack('>Q', h[48:56])[0]
        self.l2 = _be64(f, self.l1) & OFF_MASK
        self.rb = _be64(f, self.rt) & OFF_MASK
        self.cs = 1 << struct.unpack('>I', h[20:24])[0]

    def l2e(self, i):
        return _be64(self.f, self.l2 + 8 * i)

    def set_rc(self, cluster, v):
        _put16(self.f, self.rb + 2 * cluster, v)


def l2_past_eof(im):
    # guest cluster 1 now maps far beyond the end of the file
    _put64(im.f, im.l2 + 8, COPIED | 0x10000000)


def refcount_zero(im):
    # the data cluster of guest cluster 0 loses its refcount
    im.set_rc((im.l2e(0) & OFF_MASK) // im.cs, 0)


def leak(im):
    # a cluster at the end of the file with refcount 1 and no user
    im.f.seek(0, os.SEEK_END)
    n = im.f.tell() // im.cs
    im.f.write(b'\0' * im.cs)
    im.set_rc(n, 1)


def refcount_high(im):
    # a data cluster counted twice: a leak and a COPIED mismatch
    im.set_rc((im.l2e(1) & OFF_MASK) // im.cs, 2)


def l1_unaligned(im):
    _put64(im.f, im.l1, _be64(im.f, im.l1) + 0x200)


def reftable_zero(im):
    _put64(im.f, im.rt, 0)


def reftable_unaligned(im):
    _put64(im.f, im.rt, im.rb + 0x200)


def refblock_refcount_zero(im):
    im.set_rc(im.rb // im.cs, 0)


def copied_cleared(im):
    _put64(im.f, im.l2 + 16, im.l2e(2) & ~COPIED)


def l1_copied_cleared(im):
    _put64(im.f, im.l1, _be64(im.f, im.l1) & ~COPIED)


def overlap_l1(im):
    # guest cluster 2 maps onto the L1 table: metadata overlap
    _put64(im.f, im.l2 + 16, COPIED | im.l1)


def l2_unaligned_data(im):
    _put64(im.f, im.l2 + 8, im.l2e(1) + 0x200)


# name -> damage; the images qemu-img check -r all repairs completely
DAMAGE = {
    'leak': leak,
    'refcount-zero': refcount_zero,
    'refcount-high': refcount_high,
    'reftable-zero': reftable_zero,
    'refblock-refcount-zero': refblock_refcount_zero,
    'copied-cleared': copied_cleared,
    'l1-copied-cleared': l1_copied_cleared,
    'overlap-l1': overlap_l1,
}
# damage the reference's repair leaves reported (data it cannot recover)
UNREPAIRABLE = {
    'l2-past-eof': l2_past_eof,
    'l1-unaligned': l1_unaligned,
    'l2-unaligned-data': l2_unaligned_data,
    # the reference marks the image corrupt and then fails its own rebuild
    # (blockd-img check -r all rebuilds it: see 072)
    'reftable-unaligned': reftable_unaligned,
}


def make(name, path):
    base(path)
    fn = DAMAGE.get(name) or UNREPAIRABLE[name]
    with open(path, 'r+b') as f:
        fn(Image(f))
