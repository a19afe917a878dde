#!/usr/bin/env python3
"""Write the seed corpus of fuzz-nbd: client byte streams with a valid
handshake followed by requests, so that mutations reach both phases.
Usage: gen-nbd-corpus.py OUTDIR"""
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513


def opt(o, data=b''):
    return struct.pack('>QII', IHAVEOPT, o, len(data)) + data


def s32(b):
    return struct.pack('>I', len(b)) + b


def go(name, infos=(0, 1, 2, 3), o=7):
    return opt(o, s32(name) + struct.pack('>H', len(infos)) +
               b''.join(struct.pack('>H', i) for i in infos))


def meta(o, name, queries):
    return opt(o, s32(name) + struct.pack('>I', len(queries)) +
               b''.join(s32(q) for q in queries))


def req(typ, off, ln, flags=0, cookie=1, data=b''):
    return struct.pack('>IHHQQI', REQ_MAGIC, flags, typ, cookie, off,
                       ln) + data


DISC = req(2, 0, 0)

seeds = {
    # fixed newstyle, structured replies, both contexts, every command
    'go-structured': struct.pack('>I', 3) + opt(8) +
    meta(10, b'ro', [b'base:allocation', b'qemu:allocation-depth']) +
    go(b'ro') + req(0, 0, 4096) + req(0, 512, 1024, flags=4, cookie=2) +
    req(7, 0, 1 << 20, cookie=3) + req(7, 4096, 8192, flags=8, cookie=4) +
    req(5, 0, 65536, cookie=5) + req(3, 0, 0, cookie=6) +
    req(1, 0, 4, cookie=7, data=b'abcd') + DISC,
    'go-writable': struct.pack('>I', 3) + opt(8) +
    meta(10, b'disk', [b'base:allocation', b'qemu:dirty-bitmap:fb']) +
    go(b'disk') +
    req(1, 0, 512, flags=1, data=b'\xab' * 512) +
    req(6, 4096, 65536, flags=0x12, cookie=2) +
    req(4, 65536, 65536, flags=1, cookie=3) + req(0, 0, 8192, cookie=4) +
    req(7, 0, 4 << 20, cookie=5) + req(3, 0, 0, cookie=6) + DISC,
    # oldstyle-compatible path with simple replies
    'export-name': struct.pack('>I', 1) + opt(1, b'disk') +
    req(0, 0, 512) + req(1, 0, 3, data=b'xyz', cookie=2) +
    req(0, 4 << 20, 1, cookie=3) + DISC,
    # option haggling only
    'options': struct.pack('>I', 3) + opt(3) + go(b'ro', o=6) +
    go(b'nope', o=6) + opt(99, b'junk') + opt(5) + opt(8) +
    meta(9, b'ro', []) + meta(9, b'disk', [b'base:', b'qemu:']) +
    opt(2),
}

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), 'wb') as f:
        f.write(data)
