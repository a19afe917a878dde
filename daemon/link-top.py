#!/usr/bin/env python3
"""Link a program built in daemon/ to the top of the build tree.

Meson puts a target's output in the build directory of the meson.build
that defines it; scripts and iotests expect build/blockd and
build/blockd-img.  argv: program, build root, stamp file to write.
"""
import os
import sys

prog, build_root, stamp = sys.argv[1:4]
link = os.path.join(build_root, os.path.basename(prog))
target = os.path.relpath(os.path.abspath(prog), os.path.abspath(build_root))
tmp = link + '.tmp'
if os.path.lexists(tmp):
    os.unlink(tmp)
os.symlink(target, tmp)
os.replace(tmp, link)  # atomic: a running test never sees no program
with open(stamp, 'w') as f:
    f.write(target + '\n')
