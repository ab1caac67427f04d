"""Loop cells run plainly and under %%parallel by the serial-equivalence tests.

Each entry: (name, setup code run first in both namespaces, the cell). The
setup defines helpers in the "notebook", as a user would in an earlier cell.
"""

SETUP = """
import time, sys, math
def slow_power(x, p):
    time.sleep(0.01)
    return x ** p
def slow_add(a, b):
    time.sleep(0.01)
    return a + b
def slow_subtract(a, b):
    time.sleep(0.01)
    return a - b
class Logger:
    def info(self, x):
        print("log", x)
log = Logger()
class Box:
    def __init__(self):
        self.items = []
        self.count = 0
        self.by_key = {}
"""

CELLS = [
    (
        "joblib_slow_power",
        """
results = []
for i in range(10):
    results.append(slow_power(i, 5))
""",
    ),
    (
        "joblib_if_else",
        """
results = []
for i in range(10):
    if i % 2 == 0:
        results.append(slow_add(i, 1))
    else:
        results.append(slow_subtract(i, 1))
""",
    ),
    (
        "spec_worked_example",
        """
results, total = [], 0
for i in range(10):
    v = slow_power(i, 5)
    if v % 2:
        print("odd", i)
    results.append(v)
    total += v
""",
    ),
    (
        "dict_item_assignment",
        """
squares = {}
for k in range(12):
    squares[k] = k * k
""",
    ),
    (
        "nested_path_append",
        """
groups = {0: [], 1: [], 2: []}
for n in range(20):
    groups[n % 3].append(n)
""",
    ),
    (
        "attribute_effects",
        """
box = Box()
for n in range(8):
    box.items.append(n)
    box.count += 1
    box.by_key[n] = str(n)
    box.last = n
""",
    ),
    (
        "augassign_string",
        """
s = ""
for i in range(6):
    s += str(i)
""",
    ),
    (
        "extend_and_kwargs",
        """
log = []
for i in range(5):
    log.extend([i, -i])
    log.append(dict(i=i, sq=i * i))
""",
    ),
    (
        "starred_call",
        """
acc = []
for i in range(4):
    parts = [i, i + 1]
    acc.append(tuple([*parts]))
    acc.extend(*[parts])
""",
    ),
    (
        "continue_and_last_local",
        """
kept = []
for i in range(10):
    if i % 3 == 0:
        continue
    last_kept = i * 10
    kept.append(last_kept)
""",
    ),
    (
        "local_not_assigned_in_last_iteration",
        """
out = []
for i in range(7):
    if i < 5:
        w = i * 2
    else:
        continue
    out.append(w)
""",
    ),
    (
        "else_clause",
        """
seen = []
for i in range(3):
    seen.append(i)
else:
    finished = len(seen)
""",
    ),
    (
        "nested_loops",
        """
pairs = []
for i in range(4):
    row = []
    for j in range(3):
        row.append(i * j)
    pairs.append(row)
""",
    ),
    (
        "print_order",
        """
for i in range(12):
    print("item", i)
    if i % 4 == 0:
        print("  multiple of four")
""",
    ),
    (
        "print_order_when_later_iterations_finish_first",
        """
for i in range(6):
    time.sleep(0.02 * (6 - i))
    print("finished", i)
""",
    ),
    (
        "generator_iterable",
        """
def gen(n):
    for k in range(n):
        yield k * 3
collected = []
for x in gen(9):
    collected.append(x + 1)
""",
    ),
    (
        "tuple_target_enumerate",
        """
names = ["a", "b", "c", "d"]
labels = []
for idx, (name, code) in enumerate(zip(names, range(100, 104))):
    labels.append(f"{idx}:{name}:{code}")
""",
    ),
    (
        "lambda_and_closure",
        """
scale = 3
f = lambda x: x * scale
def make_adder(n):
    def add(x):
        return x + n
    return add
add5 = make_adder(5)
res = []
for i in range(6):
    res.append(add5(f(i)))
""",
    ),
    (
        "class_in_notebook",
        """
class Point:
    def __init__(self, x):
        self.x = x
    def norm(self):
        return abs(self.x)
pts = []
for i in range(-3, 3):
    pts.append(Point(i).norm())
""",
    ),
    (
        "try_except_in_body",
        """
inv = []
for i in range(-2, 3):
    try:
        r = 1 / i
    except ZeroDivisionError:
        r = None
    inv.append(r)
""",
    ),
    (
        "statements_around_loops",
        """
a = 1
first = []
for i in range(3):
    first.append(i + a)
b = sum(first)
second = []
for j in range(4):
    second.append(j * b)
c = second[-1]
""",
    ),
    (
        "list_comprehension",
        """
sq = [slow_power(i, 2) for i in range(10)]
""",
    ),
    (
        "comprehension_with_if_and_two_generators",
        """
grid = [(i, j) for i in range(4) if i != 2 for j in range(i)]
""",
    ),
    (
        "set_and_dict_comprehension",
        """
mods = {i % 4 for i in range(20)}
table = {i: i ** 3 for i in range(6) if i % 2}
""",
    ),
    (
        "last_expression_comprehension",
        """
base = 10
[base + i for i in range(5)]
""",
    ),
    (
        "last_expression_after_loop",
        """
acc = []
for i in range(4):
    acc.append(i)
len(acc), acc
""",
    ),
    (
        "delete_item",
        """
d = {i: i for i in range(8)}
for k in range(0, 8, 2):
    del d[k]
""",
    ),
    (
        "slice_assignment",
        """
buf = [0] * 10
for i in range(5):
    buf[2 * i:2 * i + 2] = [i, -i]
""",
    ),
    (
        "while_in_body",
        """
steps = []
for n in range(1, 8):
    count = 0
    m = n
    while m != 1:
        m = m // 2 if m % 2 == 0 else 3 * m + 1
        count += 1
    steps.append(count)
""",
    ),
    (
        "stderr_output",
        """
for i in range(4):
    print("err", i, file=sys.stderr)
    print("out", i)
""",
    ),
    (
        "empty_iterable",
        """
x = "untouched"
got = []
for x in []:
    got.append(x)
""",
    ),
    (
        "module_call_in_body",
        """
roots = []
for i in range(5):
    time.sleep(0.001)
    roots.append(math.sqrt(i))
""",
    ),
    (
        "counter_with_get_free_effect",
        """
counts = {"even": 0, "odd": 0}
for i in range(11):
    key = "even" if i % 2 == 0 else "odd"
    counts[key] += 1
""",
    ),
    (
        "two_loops_one_cell",
        """
xs = []
for i in range(3):
    xs.append(i)
ys = []
for j in range(3):
    ys.append(j * 2)
""",
    ),
    (
        "with_statement",
        """
import contextlib
vals = []
for i in range(-1, 2):
    with contextlib.suppress(ZeroDivisionError):
        vals.append(10 // i)
""",
    ),
    (
        "match_statement",
        """
kinds = []
for v in [1, "a", (1, 2), None]:
    match v:
        case int():
            kind = "int"
        case str():
            kind = "str"
        case (a, b):
            kind = f"pair {a} {b}"
        case _:
            kind = "other"
    kinds.append(kind)
""",
    ),
]
