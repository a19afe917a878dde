"""Read a QAPI schema (QAPI's JSON dialect) into a small type model.

The dialect: a sequence of top-level dictionaries with single-quoted
strings, true/false and '#' comments.  Only what docs/qapi-codegen.md
lists is supported; anything else is an error naming the file and the
expression, so a schema typo fails the build instead of generating
nonsense.
"""

import os
import re
import sys

C_KEYWORDS = set('''
auto break case char const continue default do double else enum extern
float for goto if inline int long register restrict return short signed
sizeof static struct switch typedef union unsigned void volatile while
_Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn
_Static_assert _Thread_local asm typeof
unix errno mips sparc i386 linux
bool catch class const_cast delete dynamic_cast explicit false friend
mutable namespace new operator private protected public reinterpret_cast
static_cast template this throw true try typeid typename using virtual
wchar_t and and_eq bitand bitor compl not not_eq or or_eq xor xor_eq
'''.split())


class SchemaError(Exception):
    pass


# ---------------------------------------------------------------- parser

class _Parser:
    """Recursive descent over the dialect; returns plain Python values."""

    def __init__(self, path):
        self.path = path
        with open(path, encoding='utf-8') as f:
            self.src = f.read()
        self.pos = 0
        self.line = 1

    def fail(self, msg):
        raise SchemaError('%s:%d: %s' % (self.path, self.line, msg))

    def skip(self):
        while self.pos < len(self.src):
            c = self.src[self.pos]
            if c == '#':
                while self.pos < len(self.src) and self.src[self.pos] != '\n':
                    self.pos += 1
            elif c in ' \t\r\n':
                if c == '\n':
                    self.line += 1
                self.pos += 1
            else:
                break

    def peek(self):
        if self.pos >= len(self.src):
            self.fail('unexpected end of file')
        return self.src[self.pos]

    def value(self):
        self.skip()
        if self.pos >= len(self.src):
            self.fail('unexpected end of file')
        c = self.src[self.pos]
        if c == '{':
            self.pos += 1
            d = {}
            self.skip()
            if self.peek() == '}':
                self.pos += 1
                return d
            while True:
                k = self.value()
                if not isinstance(k, str):
                    self.fail('dictionary key must be a string')
                self.skip()
                if self.peek() != ':':
                    self.fail("expected ':'")
                self.pos += 1
                if k in d:
                    self.fail("duplicate key '%s'" % k)
                d[k] = self.value()
                self.skip()
                c = self.peek()
                self.pos += 1
                if c == '}':
                    return d
                if c != ',':
                    self.fail("expected ',' or '}'")
        if c == '[':
            self.pos += 1
            lst = []
            self.skip()
            if self.peek() == ']':
                self.pos += 1
                return lst
            while True:
                lst.append(self.value())
                self.skip()
                c = self.peek()
                self.pos += 1
                if c == ']':
                    return lst
                if c != ',':
                    self.fail("expected ',' or ']'")
        if c == "'":
            end = self.src.find("'", self.pos + 1)
            if end < 0 or '\n' in self.src[self.pos:end]:
                self.fail('unterminated string')
            s = self.src[self.pos + 1:end]
            self.pos = end + 1
            return s
        for word, val in (('true', True), ('false', False)):
            if self.src.startswith(word, self.pos):
                self.pos += len(word)
                return val
        self.fail('unexpected character %r' % c)

    def exprs(self):
        out = []
        while True:
            self.skip()
            if self.pos >= len(self.src):
                return out
            line = self.line
            e = self.value()
            if not isinstance(e, dict):
                self.fail('top-level expression must be a dictionary')
            out.append((e, '%s:%d' % (self.path, line)))


# ---------------------------------------------------------------- naming

def c_name(name, protect=True):
    """Schema name to C identifier: '-' and '.' become '_'.  With protect,
    words that C, C++ or GCC's predefined macros (unix, linux, ...) claim
    get a 'q_' prefix, as QEMU's generator does."""
    n = re.sub(r'[-.]', '_', name)
    if protect and (n in C_KEYWORDS or n[0].isdigit()):
        return 'q_' + n
    return n


def camel_to_upper(value):
    """'BlockdevDriver' -> 'BLOCKDEV_DRIVER', 'QMPCapability' ->
    'QMP_CAPABILITY', 'Qcow2CompressionType' -> 'QCOW2_COMPRESSION_TYPE'.
    An underscore goes before an upper-case letter that starts a word: one
    followed by a lower-case letter, or one following a digit."""
    s = c_name(value, False)
    if value.isupper():
        return s
    out = []
    for i, ch in enumerate(s):
        if ch.isupper() and i > 0 and s[i - 1] != '_':
            nxt_lower = i + 1 < len(s) and s[i + 1].islower()
            if nxt_lower or s[i - 1].isdigit():
                out.append('_')
        out.append(ch)
    return ''.join(out).lstrip('_').upper()


# ---------------------------------------------------------------- model

BUILTINS = {
    # name: (C type, JSON type for introspection, introspection name)
    'str': ('char *', 'string', 'str'),
    'int': ('int64_t', 'int', 'int'),
    'int8': ('int8_t', 'int', 'int'),
    'int16': ('int16_t', 'int', 'int'),
    'int32': ('int32_t', 'int', 'int'),
    'int64': ('int64_t', 'int', 'int'),
    'uint8': ('uint8_t', 'int', 'int'),
    'uint16': ('uint16_t', 'int', 'int'),
    'uint32': ('uint32_t', 'int', 'int'),
    'uint64': ('uint64_t', 'int', 'int'),
    'size': ('uint64_t', 'int', 'int'),
    'bool': ('bool', 'boolean', 'bool'),
    'number': ('double', 'number', 'number'),
    'any': ('JsonNode *', 'value', 'any'),
    'null': (None, 'null', 'null'),
}


class Type:
    kind = None
    is_implicit = False

    def __init__(self, name, info):
        self.name = name
        self.info = info
        self.features = []

    @property
    def c_name(self):
        return c_name(self.name, False)

    def is_complex(self):
        """Stored as a pointer and has qapi_free_/clone/parse functions
        taking pointers."""
        return self.kind in ('struct', 'union', 'alternate')


class Builtin(Type):
    kind = 'builtin'

    def __init__(self, name):
        super().__init__(name, 'builtin')
        self.c_type, self.json_type, self.intro_name = BUILTINS[name]


class EnumValue:
    def __init__(self, name, features):
        self.name = name
        self.features = features


class Enum(Type):
    kind = 'enum'

    def __init__(self, name, info, values, prefix):
        super().__init__(name, info)
        self.values = values
        self.prefix = prefix

    def const(self, value):
        prefix = self.prefix or camel_to_upper(self.name)
        return '%s_%s' % (prefix, c_name(value, False).upper())

    @property
    def max_const(self):
        prefix = self.prefix or camel_to_upper(self.name)
        return '%s__MAX' % prefix


class Member:
    def __init__(self, name, type_name, optional, features, info):
        self.name = name
        self.type_name = type_name
        self.optional = optional
        self.features = features
        self.info = info
        self.type = None

    @property
    def c_name(self):
        return c_name(self.name)


class ObjectType(Type):
    """A struct, or a flat union (kind 'union')."""

    def __init__(self, name, info, kind, base, members):
        super().__init__(name, info)
        self.kind = kind
        self.base_name = base
        self.base = None
        self.own_members = members
        self.discriminator = None
        self.variants = []      # (enum value, Type or None)
        self.variant_names = {}  # enum value -> type name

    def all_members(self):
        out = []
        if self.base:
            out += self.base.all_members()
        return out + self.own_members

    def variant_members(self):
        return [(v, t) for v, t in self.variants if t is not None]


class Alternate(Type):
    kind = 'alternate'

    def __init__(self, name, info, branches):
        super().__init__(name, info)
        self.branch_names = branches  # [(branch name, type name)]
        self.branches = []            # [(branch name, Type)]


class ArrayType(Type):
    kind = 'array'

    def __init__(self, element):
        super().__init__('[%s]' % element.name, element.info)
        self.element = element

    @property
    def c_name(self):
        return self.element.c_name + 'List'


class Command:
    def __init__(self, name, info, arg_type, ret_type, boxed, allow_oob,
                 coroutine, features):
        self.name = name
        self.info = info
        self.arg_type_name = arg_type
        self.ret_type_name = ret_type
        self.arg_type = None
        self.ret_type = None
        self.boxed = boxed
        self.allow_oob = allow_oob
        self.coroutine = coroutine
        self.features = features


class Event:
    def __init__(self, name, info, arg_type, boxed, features):
        self.name = name
        self.info = info
        self.arg_type_name = arg_type
        self.arg_type = None
        self.boxed = boxed
        self.features = features


def _features(expr, info):
    out = []
    for f in expr.get('features', []):
        if isinstance(f, dict):
            f = f['name']
        if not isinstance(f, str):
            raise SchemaError('%s: bad feature' % info)
        out.append(f)
    return out


class Schema:
    def __init__(self, main_file):
        self.types = {}       # name -> Type (named and implicit)
        self.order = []       # Types in definition order (no arrays)
        self.commands = []
        self.events = []
        self.files = []
        for name in BUILTINS:
            self.types[name] = Builtin(name)
        self._include(os.path.abspath(main_file), set())
        self._resolve()
        self._check()

    # -------------------------------------------------------- reading
    def _include(self, path, seen):
        if path in seen:
            return
        seen.add(path)
        self.files.append(path)
        for expr, info in _Parser(path).exprs():
            if 'include' in expr:
                self._include(os.path.join(os.path.dirname(path),
                                           expr['include']), seen)
            elif 'pragma' in expr:
                pass
            else:
                try:
                    self._define(expr, info)
                except (KeyError, TypeError, AttributeError) as e:
                    raise SchemaError('%s: malformed expression (%s: %s)'
                                      % (info, type(e).__name__, e))

    def _add(self, t):
        if t.name in self.types:
            raise SchemaError("%s: '%s' is already defined" % (t.info, t.name))
        self.types[t.name] = t
        self.order.append(t)
        return t

    def _members(self, data, info):
        if not isinstance(data, dict):
            raise SchemaError('%s: members must be a dictionary' % info)
        out = []
        for key, val in data.items():
            optional = key.startswith('*')
            name = key[1:] if optional else key
            feats = []
            if isinstance(val, dict):
                feats = _features(val, info)
                val = val['type']
            out.append(Member(name, self._type_ref(val, info), optional,
                              feats, info))
        return out

    def _type_ref(self, val, info):
        if isinstance(val, list):
            if len(val) != 1 or not isinstance(val[0], str):
                raise SchemaError('%s: bad array type' % info)
            return '[%s]' % val[0]
        if not isinstance(val, str):
            raise SchemaError('%s: bad type reference %r' % (info, val))
        return val

    def _implicit(self, name, data, info):
        t = ObjectType(name, info, 'struct', None, self._members(data, info))
        t.is_implicit = True
        return self._add(t)

    def _define(self, expr, info):
        feats = _features(expr, info)
        if 'enum' in expr:
            vals = []
            for v in expr['data']:
                if isinstance(v, dict):
                    vals.append(EnumValue(v['name'], _features(v, info)))
                else:
                    vals.append(EnumValue(v, []))
            t = Enum(expr['enum'], info, vals, expr.get('prefix'))
        elif 'struct' in expr:
            t = ObjectType(expr['struct'], info, 'struct', expr.get('base'),
                           self._members(expr.get('data', {}), info))
        elif 'union' in expr:
            name = expr['union']
            base = expr.get('base')
            if isinstance(base, dict):
                base = self._implicit('q_obj_%s-base' % name, base, info).name
            if base is None or 'discriminator' not in expr:
                raise SchemaError('%s: union %s needs base and discriminator'
                                  % (info, name))
            t = ObjectType(name, info, 'union', base, [])
            t.discriminator = expr['discriminator']
            for v, vt in expr['data'].items():
                if isinstance(vt, dict):
                    vt = vt['type']
                t.variant_names[v] = vt
        elif 'alternate' in expr:
            br = []
            for b, bt in expr['data'].items():
                if isinstance(bt, dict):
                    bt = bt['type']
                br.append((b, self._type_ref(bt, info)))
            t = Alternate(expr['alternate'], info, br)
        elif 'command' in expr:
            self.commands.append(self._command(expr, info, feats))
            return
        elif 'event' in expr:
            name = expr['event']
            data = expr.get('data')
            if isinstance(data, dict):
                data = self._implicit('q_obj_%s-arg' % name, data, info).name
            self.events.append(Event(name, info, data,
                                     expr.get('boxed', False), feats))
            return
        else:
            raise SchemaError('%s: unknown expression %r' % (info, expr))
        t.features = feats
        self._add(t)

    def _command(self, expr, info, feats):
        name = expr['command']
        data = expr.get('data')
        if isinstance(data, dict):
            data = self._implicit('q_obj_%s-arg' % name, data, info).name
        ret = expr.get('returns')
        if ret is not None:
            ret = self._type_ref(ret, info)
        for k in expr:
            if k not in ('command', 'data', 'returns', 'boxed', 'allow-oob',
                         'coroutine', 'features', 'allow-preconfig', 'if',
                         'success-response'):
                raise SchemaError("%s: unknown key '%s'" % (info, k))
        return Command(name, info, data, ret, expr.get('boxed', False),
                       expr.get('allow-oob', False),
                       expr.get('coroutine', False), feats)

    # -------------------------------------------------------- resolving
    def lookup(self, name, info):
        if name.startswith('['):
            elem = self.lookup(name[1:-1], info)
            if name not in self.types:
                self.types[name] = ArrayType(elem)
            return self.types[name]
        t = self.types.get(name)
        if t is None:
            raise SchemaError("%s: unknown type '%s'" % (info, name))
        return t

    def _resolve(self):
        # Bases and members first: unions look at their base's members.
        for t in list(self.order):
            if isinstance(t, ObjectType):
                if t.base_name:
                    t.base = self.lookup(t.base_name, t.info)
                    if t.base.kind != 'struct':
                        raise SchemaError('%s: base of %s must be a struct'
                                          % (t.info, t.name))
                for m in t.own_members:
                    m.type = self.lookup(m.type_name, m.info)
                    if m.type.name == 'null':
                        raise SchemaError('%s: null member' % t.info)
        for t in list(self.order):
            if isinstance(t, ObjectType) and t.kind == 'union':
                self._resolve_union(t)
            elif isinstance(t, Alternate):
                for b, bt in t.branch_names:
                    bty = self.lookup(bt, t.info)
                    if bty.kind in ('alternate', 'array'):
                        raise SchemaError('%s: alternate branch %s must be a '
                                          'struct or scalar' % (t.info, b))
                    t.branches.append((b, bty))
        for c in self.commands:
            if c.arg_type_name:
                c.arg_type = self.lookup(c.arg_type_name, c.info)
                if c.arg_type.kind not in ('struct', 'union'):
                    raise SchemaError('%s: bad command data' % c.info)
            if c.ret_type_name:
                c.ret_type = self.lookup(c.ret_type_name, c.info)
        for e in self.events:
            if e.arg_type_name:
                e.arg_type = self.lookup(e.arg_type_name, e.info)
                if e.arg_type.kind != 'struct' and not e.boxed:
                    raise SchemaError('%s: event data must be a struct'
                                      % e.info)
        # List types exist for the lists the schema uses (as in QEMU)
        # and, for handlers' convenience, for every builtin.
        for b in BUILTINS:
            if b != 'null':
                self.lookup('[%s]' % b, 'builtin')

    def _resolve_union(self, t):
        members = {m.name: m for m in t.all_members()}
        tag = members.get(t.discriminator)
        if tag is None or tag.type.kind != 'enum' or tag.optional:
            raise SchemaError('%s: discriminator of %s must be a required '
                              'enum member' % (t.info, t.name))
        t.tag_member = tag
        enum = tag.type
        names = [v.name for v in enum.values]
        for v in t.variant_names:
            if v not in names:
                raise SchemaError("%s: '%s' is not a value of %s"
                                  % (t.info, v, enum.name))
        for v in names:
            vt = t.variant_names.get(v)
            vty = self.lookup(vt, t.info) if vt else None
            if vty is not None and vty.kind != 'struct':
                raise SchemaError('%s: variant %s must be a struct'
                                  % (t.info, v))
            t.variants.append((v, vty))

    # -------------------------------------------------------- checks
    def _check(self):
        """Clashes that would make the generated C or the wire format
        ambiguous."""
        def unique(names, what, info):
            seen = {}
            for n, c in names:
                if c in seen:
                    raise SchemaError("%s: %s '%s' clashes with '%s'"
                                      % (info, what, n, seen[c]))
                seen[c] = n

        for t in self.order:
            if t.kind == 'enum':
                unique([(v.name, c_name(v.name, False).upper())
                        for v in t.values], 'enum value', t.info)
            elif t.kind in ('struct', 'union'):
                members = t.all_members()
                unique([(m.name, m.c_name) for m in members] +
                       [('has_' + m.name, 'has_' + m.c_name)
                        for m in members if m.optional] +
                       ([('u', 'u')] if t.kind == 'union' else []),
                       'member', t.info)
                for v, vt in t.variants if t.kind == 'union' else []:
                    if vt is not None:
                        # base and variant members share one JSON object
                        unique([(m.name, m.name) for m in members] +
                               [(m.name, m.name) for m in vt.all_members()],
                               'variant %s member' % v, t.info)
                if t.kind == 'union':
                    unique([(v, c_name(v)) for v, vt in t.variant_members()],
                           'variant', t.info)
            elif t.kind == 'alternate':
                qtypes = []
                for b, bt in t.branches:
                    if bt.kind in ('struct', 'union'):
                        qt = 'object'
                    elif bt.kind == 'enum' or bt.name == 'str':
                        qt = 'string'
                    elif bt.name == 'number':
                        qt = 'number'
                    elif bt.name in ('bool', 'null'):
                        qt = bt.name
                    elif bt.name == 'any':
                        raise SchemaError("%s: alternate %s cannot have an "
                                          "'any' branch" % (t.info, t.name))
                    else:
                        qt = 'integer'
                    qtypes.append((b, qt))
                unique(qtypes, 'branch', t.info)
        unique([(c.name, c_name(c.name)) for c in self.commands],
               'command', 'schema')
        unique([(e.name, c_name(e.name.lower())) for e in self.events],
               'event', 'schema')

    # -------------------------------------------------------- helpers
    def arrays(self):
        return [t for t in self.types.values() if t.kind == 'array']


def load(main_file):
    try:
        return Schema(main_file)
    except SchemaError as e:
        sys.stderr.write('qapi: %s\n' % e)
        sys.exit(1)
