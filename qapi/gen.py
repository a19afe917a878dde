#!/usr/bin/env python3
"""Generate the QAPI C code.

usage: gen.py SCHEMA OUTDIR

Writes into OUTDIR: qapi-types.h/.c, qapi-commands.h/.c, qapi-events.h/.c,
qapi-introspect.h/.c and qapi-schema.json (the introspection data, for
tests and tools).  See docs/qapi-codegen.md for what the code looks like.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import schema as qschema  # noqa: E402
import gen_types  # noqa: E402
import gen_commands  # noqa: E402
import gen_events  # noqa: E402
import gen_introspect  # noqa: E402


def write(outdir, name, text):
    path = os.path.join(outdir, name)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    s = qschema.load(argv[1])
    outdir = argv[2]
    os.makedirs(outdir, exist_ok=True)
    h, c = gen_types.TypesGen(s).generate()
    write(outdir, 'qapi-types.h', h)
    write(outdir, 'qapi-types.c', c)
    h, c = gen_commands.generate(s)
    write(outdir, 'qapi-commands.h', h)
    write(outdir, 'qapi-commands.c', c)
    h, c = gen_events.generate(s)
    write(outdir, 'qapi-events.h', h)
    write(outdir, 'qapi-events.c', c)
    h, c, text = gen_introspect.generate(s)
    write(outdir, 'qapi-introspect.h', h)
    write(outdir, 'qapi-introspect.c', c)
    write(outdir, 'qapi-schema.json', text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
