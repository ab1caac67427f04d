"""Loop cells in the style of widely read data-science notebooks, for tests/test_corpus.py.

Each :class:`Case` is a setup (one or more cells), the loop cell, and the kernel
expressions whose values (normalised by ``_pm_norm``, see :data:`COMMON`) the plain
and the ``%%parallel`` run must agree on. Identity checks are expressions too
(``estimators[0] is est``), evaluated in the kernel.

Sources of the styles: the Python Data Science Handbook (VanderPlas), Hands-On
Machine Learning (Géron), Think Stats (Downey), the scikit-learn and joblib example
galleries and the classic Kaggle Titanic kernels. Data are tiny and synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Run in the kernel after every reset: the imports the notebooks start with, the data,
#: and the snapshot helpers (underscore names, so they are not part of any snapshot).
COMMON = r"""
import json as _pm_json, sys, os, re, random, warnings, logging, importlib
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display, Markdown, HTML
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import cross_val_score
from sklearn.exceptions import ConvergenceWarning

# kernel settings one case changes must not leak into the next (the kernel is shared)
if not hasattr(warnings, "_pm_filters"):
    warnings._pm_filters = list(warnings.filters)
warnings.resetwarnings()
for _pm_f in reversed(warnings._pm_filters):
    warnings.filterwarnings(_pm_f[0], getattr(_pm_f[1], "pattern", _pm_f[1] or ""), _pm_f[2],
                            getattr(_pm_f[3], "pattern", _pm_f[3] or ""), _pm_f[4])
logging.root.handlers[:] = []
logging.root.setLevel(logging.WARNING)
plt.close("all")

_pm_rs = np.random.RandomState(0)
X = _pm_rs.randn(40, 3)
y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
del _pm_rs

def _pm_norm(v, depth=0):
    if depth > 6:
        return repr(v)
    if isinstance(v, pd.DataFrame):
        return {"DataFrame": [[str(c) for c in v.columns], [str(t) for t in v.dtypes], v.to_string()]}
    if isinstance(v, pd.Series):
        return {"Series": v.to_string()}
    if isinstance(v, np.ndarray):
        return {"array": repr(np.round(v, 8).tolist()) if v.dtype.kind in "fiub" else repr(v)}
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return "nan" if v != v else round(float(v), 9)
    if isinstance(v, (str, type(None))):
        return v
    if isinstance(v, dict):
        return {"dict": [[repr(k), _pm_norm(x, depth + 1)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return {type(v).__name__: [_pm_norm(x, depth + 1) for x in v]}
    if isinstance(v, (set, frozenset)):
        return {"set": sorted(repr(x) for x in v)}
    if hasattr(v, "get_params") and hasattr(v, "fit"):  # a scikit-learn estimator
        out = {"estimator": type(v).__name__, "fitted": hasattr(v, "n_features_in_")}
        for attr in ("coef_", "intercept_", "cluster_centers_", "means_", "tree_"):
            if hasattr(v, attr):
                a = getattr(v, attr)
                out[attr] = _pm_norm(a.node_count if attr == "tree_" else np.asarray(a), depth + 1)
        return out
    if isinstance(v, type) or callable(v):
        return type(v).__name__ + " " + getattr(v, "__name__", "?")
    if hasattr(v, "__dict__"):
        return {type(v).__name__: _pm_norm(vars(v), depth + 1)}
    return repr(v)

def _pm_snap(exprs):
    out = {}
    for e in exprs:
        try:
            out[e] = _pm_norm(eval(e, globals()))
        except Exception as exc:
            out[e] = "raised " + type(exc).__name__
    print(_pm_json.dumps(out))
"""


@dataclass(frozen=True)
class Case:
    """One corpus cell and what to compare.

    ``draws`` (random cases): an expression giving the list of numbers the loop drew,
    and ``next_draw`` one that draws from the same generator in the next cell.
    ``after``: a cell run after the case's cell (both runs), e.g. to catch its error.
    ``fails``: backend (or ``"*"``) -> why the case fails today (a strict xfail).
    """

    name: str
    category: str
    setup: tuple[str, ...]
    cell: str
    snap: tuple[str, ...]
    draws: str = ""
    next_draw: str = ""
    after: str = ""
    error: bool = False


def case(
    name: str, category: str, setup: str | tuple[str, ...], cell: str, *snap: str, **kw
) -> Case:
    """A :class:`Case` with a one-cell setup given as a string."""
    setup = (setup,) if isinstance(setup, str) else setup
    return Case(name, category, tuple(setup), cell, tuple(snap), **kw)


ESTIMATORS = (
    "estimators = [LogisticRegression(), DecisionTreeClassifier(max_depth=2, random_state=0),"
    " KNeighborsClassifier(3)]"
)
TITANIC = """\
train_df = pd.DataFrame({"Name": ["Braund, Mr. Owen", "Cumings, Mrs. John", "Heikkinen, Miss. Laina"],
                         "Sex": ["male", "female", "female"], "Age": [22.0, None, 26.0]})
test_df = pd.DataFrame({"Name": ["Kelly, Mr. James", "Wilkes, Mrs. James"],
                        "Sex": ["male", "female"], "Age": [34.5, 47.0]})
combine = [train_df, test_df]
"""
GROUPS = """\
df = pd.DataFrame({"g": list("aabbbc"), "v": [1.0, 2.5, 0.5, 3.0, 4.0, 2.0],
                   "a": [1, 2, 3, 4, 5, 6], "b": [6, 5, 4, 3, 2, 1]})
frames = {"train": df.iloc[:4].copy(), "test": df.iloc[4:].copy()}
frames["train"].loc[1, "v"] = np.nan
"""
HELPERS = """\
import pathlib
pathlib.Path("nbhelpers.py").write_text("def feat(x):\\n    return 3 * x + 1\\n")
import nbhelpers
"""
LIB = """\
import pathlib
pathlib.Path("lib").mkdir(exist_ok=True)
pathlib.Path("lib/textutils.py").write_text("def clean(s):\\n    return s.strip().lower()\\n")
sys.path.insert(0, os.path.abspath("lib"))
from textutils import clean
"""
RELOAD_V1 = """\
import pathlib
pathlib.Path("scaling.py").write_text("SCALE = 1\\ndef scale(x):\\n    return SCALE * x\\n")
importlib.invalidate_caches()
import scaling
scaling = importlib.reload(scaling)
"""
RELOAD_WARM = """\
%%parallel -n 2 --no-progress
warm = []
for x in range(4):
    warm.append(scaling.scale(x))
"""
RELOAD_V2 = """\
pathlib.Path("scaling.py").write_text("SCALE = 100\\ndef scale(x):\\n    return SCALE * x\\n")
importlib.invalidate_caches()
scaling = importlib.reload(scaling)
"""
ERRORS = """\
class DataError(Exception):
    pass

def check(v):
    if v < 0:
        raise DataError(f"negative value {v}")
    return v * 10
"""
LIST_HANDLER = """\
class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
    def emit(self, record):
        self.records.append(self.format(record))

handler = ListHandler()
nb_log = logging.getLogger("nb.list")
nb_log.handlers[:] = [handler]
nb_log.setLevel(logging.INFO)
nb_log.propagate = False
"""

CASES: list[Case] = [
    # ------------------------------------------------------------------ scikit-learn
    case(
        "sk_fit_each_estimator",
        "sklearn",
        ESTIMATORS,
        "for est in estimators:\n    est.fit(X, y)\n",
        "estimators",
        "est",
        "estimators[-1] is est",
    ),
    case(
        "sk_cross_val_scores_by_name",
        "sklearn",
        "models = {'logreg': LogisticRegression(), 'knn': KNeighborsClassifier(3),"
        " 'tree': DecisionTreeClassifier(max_depth=2, random_state=0)}",
        "scores = {}\nfor name, model in models.items():\n"
        "    scores[name] = cross_val_score(model, X, y, cv=3).mean()\n",
        "scores",
        "models",
        "name",
        "model is models[name]",
    ),
    case(
        "sk_gmm_aic_comprehension",
        "sklearn",
        "models = [GaussianMixture(n, random_state=0) for n in range(1, 4)]",
        "aics = [m.fit(X).aic(X) for m in models]\n",
        "aics",
        "models",
    ),
    case(
        "sk_fit_and_score_table",
        "sklearn",
        ESTIMATORS,
        "results = []\nfor est in estimators:\n    est.fit(X, y)\n"
        "    results.append((type(est).__name__, round(est.score(X, y), 4)))\n",
        "results",
        "estimators",
        "estimators[-1] is est",
    ),
    case(
        "sk_forest_sizes",
        "sklearn",
        "",
        "acc = {}\nfor n in [3, 6]:\n"
        "    clf = RandomForestClassifier(n_estimators=n, random_state=0).fit(X, y)\n"
        "    acc[n] = clf.score(X, y)\n",
        "acc",
        "clf",
        "n",
    ),
    case(
        "sk_kmeans_elbow",
        "sklearn",
        "",
        "inertias = []\nfor k in range(1, 5):\n"
        "    km = KMeans(n_clusters=k, n_init=2, random_state=42).fit(X)\n"
        "    inertias.append(km.inertia_)\n",
        "inertias",
        "km",
    ),
    case(
        "sk_forest_of_trees_identity",
        "sklearn",
        "",
        "forest = []\nfor seed in range(3):\n"
        "    tree = DecisionTreeClassifier(max_depth=2, random_state=seed).fit(X, y)\n"
        "    forest.append(tree)\n",
        "forest",
        "forest[-1] is tree",
    ),
    case(
        "sk_fit_in_a_function",
        "sklearn",
        (ESTIMATORS, "def train(m):\n    m.fit(X, y)\n    return round(m.score(X, y), 4)\n"),
        "train_scores = [train(m) for m in estimators]\n",
        "train_scores",
        "estimators",
    ),
    # ------------------------------------------------------------------ pandas
    case(
        "pd_feature_on_both_frames",
        "pandas",
        "train = pd.DataFrame({'x': [1, 2, 3]})\ntest = pd.DataFrame({'x': [4, 5]})",
        "for df in (train, test):\n    df['x2'] = df['x'] ** 2\n",
        "train",
        "test",
        "df is test",
    ),
    case(
        "pd_titanic_title_extract",
        "pandas",
        TITANIC,
        "for dataset in combine:\n"
        "    dataset['Title'] = dataset.Name.str.extract(r' ([A-Za-z]+)\\.', expand=False)\n",
        "train_df",
        "test_df",
        "combine[0] is train_df",
    ),
    case(
        "pd_titanic_sex_map",
        "pandas",
        TITANIC,
        "for dataset in combine:\n"
        "    dataset['Sex'] = dataset['Sex'].map({'female': 1, 'male': 0}).astype(int)\n"
        "    dataset['Age'] = dataset['Age'].fillna(dataset['Age'].median())\n",
        "train_df",
        "test_df",
    ),
    case(
        "pd_weekday_columns_from_index",  # the PDSH bicycle notebook's cell
        "pandas",
        "daily = pd.DataFrame({'Total': np.arange(14.0)},"
        " index=pd.date_range('2024-01-01', periods=14))\n"
        "days = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun']",
        "for i in range(7):\n    daily[days[i]] = (daily.index.day_of_week == i).astype(float)\n",
        "daily",
    ),
    case(
        "pd_read_index_of_each_frame",  # reading a frame fills pandas' caches: not a change
        "pandas",
        "frames = [pd.DataFrame({'v': [1.0, 2.0]}, index=pd.date_range('2024-01-0%d' % d,"
        " periods=2)) for d in (1, 2, 3)]",
        "weekdays = []\nfor f in frames:\n    weekdays.append(int(f.index.day_of_week.to_numpy().sum()))\n",
        "weekdays",
        "frames",
        "f is frames[-1]",
    ),
    case(
        "pd_drop_inplace",
        "pandas",
        "strat_train = pd.DataFrame({'a': [1, 2], 'c': [0, 1]})\n"
        "strat_test = pd.DataFrame({'a': [3], 'c': [1]})",
        "for set_ in (strat_train, strat_test):\n    set_.drop('c', axis=1, inplace=True)\n",
        "strat_train",
        "strat_test",
    ),
    case(
        "pd_list_of_dicts_tag",
        "pandas",
        "ds = [{'a': 1}, {'a': 2}, {'a': 3}]",
        "for d in ds:\n    d['t'] = 1\n",
        "ds",
        "d is ds[-1]",
    ),
    case(
        "pd_fillna_inplace_items",
        "pandas",
        GROUPS,
        "for name, frame in frames.items():\n    frame.fillna(0, inplace=True)\n"
        "    print(name, int(frame.isna().sum().sum()))\n",
        "frames",
        "frame is frames['test']",
    ),
    case(
        "pd_groupby_rows",
        "pandas",
        GROUPS,
        "rows = []\nfor key, grp in df.groupby('g'):\n"
        "    rows.append({'g': key, 'mean': grp['v'].mean(), 'n': len(grp)})\n"
        "summary = pd.DataFrame(rows)\nsummary\n",
        "rows",
        "summary",
        "key",
    ),
    case(
        "pd_column_ranges",
        "pandas",
        GROUPS,
        "stats = {}\nfor col in ['v', 'a', 'b']:\n    stats[col] = (df[col].min(), df[col].max())\n",
        "stats",
        "col",
    ),
    case(
        "pd_loc_assign_iterrows",
        "pandas",
        GROUPS,
        "for i, row in df.iterrows():\n    df.loc[i, 'flag'] = row['v'] > 2\n",
        "df",
        "i",
    ),
    # ------------------------------------------------------------------ random numbers
    case(
        "rnd_np_seed_before_loop",
        "random",
        "np.random.seed(42)",
        "draws = []\nfor i in range(6):\n    draws.append(np.random.rand())\n",
        "len(draws)",
        draws="draws",
        next_draw="np.random.rand()",
    ),
    case(
        "rnd_default_rng_captured",
        "random",
        "rng = np.random.default_rng(0)",
        "walks = []\nfor i in range(6):\n    walks.append(rng.normal())\n",
        "len(walks)",
        draws="walks",
        next_draw="rng.normal()",
    ),
    case(
        "rnd_random_seed_before_loop",
        "random",
        "random.seed(0)",
        "picks = []\nfor i in range(6):\n    picks.append(random.random())\n",
        "len(picks)",
        draws="picks",
        next_draw="random.random()",
    ),
    case(
        "rnd_bootstrap_means",
        "random",
        "np.random.seed(1)\ndata = np.arange(20.0)",
        "means = []\nfor _ in range(5):\n"
        "    sample = np.random.choice(data, size=len(data), replace=True)\n"
        "    means.append(sample.mean())\n",
        "len(means)",
        draws="means",
        next_draw="np.random.rand()",
    ),
    case(
        "rnd_randomstate_comprehension",
        "random",
        "rs = np.random.RandomState(7)",
        "ends = [float(rs.randn(4).cumsum()[-1]) for _ in range(6)]\n",
        "len(ends)",
        draws="ends",
        next_draw="rs.randn()",
    ),
    case(
        "rnd_seed_inside_body",
        "random",
        "",
        "sims = []\nfor i in range(5):\n    np.random.seed(i)\n    sims.append(np.random.rand(3).sum())\n",
        "sims",
    ),
    case(
        "rnd_rng_per_iteration",
        "random",
        "",
        "pis = []\nfor seed in range(4):\n    r = np.random.default_rng(seed)\n"
        "    pts = r.random((200, 2))\n    pis.append(4 * ((pts ** 2).sum(axis=1) < 1).mean())\n",
        "pis",
    ),
    # ------------------------------------------------------------------ plots
    case(
        "plot_per_group_show",
        "plot",
        GROUPS,
        "for g, grp in df.groupby('g'):\n    plt.figure(figsize=(2, 2))\n"
        "    plt.plot(grp['v'].values)\n    plt.title(g)\n    plt.show()\n",
        "g",
    ),
    case(
        "plot_print_then_show",
        "plot",
        "",
        "for k in range(2):\n    print('run', k)\n    plt.plot([0, k])\n    plt.show()\n",
        "k",
    ),
    case(
        "plot_figures_left_open",
        "plot",
        GROUPS,
        "for col in ['a', 'b']:\n    fig, ax = plt.subplots(figsize=(2, 2))\n    ax.hist(df[col])\n",
        "col",
        "type(ax).__name__",
    ),
    # ------------------------------------------------------------------ rich display
    case(
        "disp_head_of_each_frame",
        "display",
        GROUPS,
        "for name, frame in frames.items():\n    print(name)\n    display(frame.head(2))\n",
        "name",
    ),
    case(
        "disp_markdown_metrics",
        "display",
        "metrics = {'accuracy': 0.91, 'recall': 0.78}",
        "for k, v in metrics.items():\n    display(Markdown(f'**{k}**: {v:.2f}'))\n",
        "k",
        "v",
    ),
    case(
        "disp_html_then_value",
        "display",
        "",
        "for i in range(3):\n    display(HTML(f'<b>{i}</b>'))\nlast = i\nlast * 10\n",
        "last",
    ),
    # ------------------------------------------------------------------ strings
    case(
        "text_tokens",
        "text",
        "lines = ['The cat sat.', 'A dog ran, the cat hid.', 'No animals here']",
        "tokens = []\nfor line in lines:\n    tokens.extend(re.findall(r'[a-z]+', line.lower()))\n"
        "vocab = sorted(set(tokens))\n",
        "tokens",
        "vocab",
        "line",
    ),
    case(
        "text_clean_enumerate_continue",
        "text",
        "raw = ['  alice ', '', 'BOB', '   ', 'carol smith']",
        "cleaned = []\nfor i, s in enumerate(raw):\n    s = s.strip().title()\n    if not s:\n"
        "        continue\n    cleaned.append(f'{i}:{s}')\n",
        "cleaned",
        "i",
    ),
    case(
        "text_report_zip",
        "text",
        "names = ['logreg', 'knn', 'tree']\nscores = [0.912, 0.85, 0.7777]",
        "for name, score in zip(names, scores):\n    print(f'{name:<10}{score:6.2f}')\n",
        "name",
        "score",
    ),
    # ------------------------------------------------------------------ accumulation
    case(
        "acc_history_dict_of_lists",
        "accumulate",
        "",
        "hist = {'loss': [], 'acc': []}\nfor epoch in range(4):\n"
        "    hist['loss'].append(1 / (epoch + 1))\n    hist['acc'].append(epoch / 4)\n",
        "hist",
        "epoch",
    ),
    case(
        "acc_nested_pairs_total",
        "accumulate",
        "",
        "total = 0\npairs = []\nfor i in range(4):\n    for j in range(i):\n"
        "        pairs.append((i, j))\n        total += i * j\n",
        "total",
        "pairs",
        "i",
        "j",
    ),
    case(
        "acc_loop_else_continue",
        "accumulate",
        "",
        "found = []\nfor n in range(2, 9):\n    if n % 2 == 0:\n        continue\n"
        "    found.append(n)\nelse:\n    found.append('done')\n",
        "found",
        "n",
    ),
    case(
        "acc_zip_items_weights",
        "accumulate",
        "d = {'a': 1.0, 'b': 2.0, 'c': 3.0}\nweights = [0.5, 0.25, 2]",
        "merged = {}\nfor (k, v), w in zip(d.items(), weights):\n    merged[k] = v * w\n",
        "merged",
        "k",
        "w",
    ),
    # ------------------------------------------------------------------ warnings
    case(
        "warn_ignored_before_loop",
        "warnings",
        "warnings.filterwarnings('ignore')",
        "out = []\nfor i in range(3):\n    warnings.warn('noisy')\n    out.append(i)\n",
        "out",
    ),
    case(
        "warn_sklearn_convergence_ignored",
        "warnings",
        "warnings.filterwarnings('ignore', category=ConvergenceWarning)",
        "iters = []\nfor C in [0.01, 1.0]:\n"
        "    iters.append(int(LogisticRegression(max_iter=1, C=C).fit(X, y).n_iter_[0]))\n",
        "iters",
    ),
    case(
        "warn_once_per_location",
        "warnings",
        "",
        "for i in range(4):\n    warnings.warn('deprecated thing', UserWarning)\n",
        "i",
    ),
    # ------------------------------------------------------------------ logging
    case(
        "log_basic_config",
        "logging",
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s',"
        " force=True)\nlog = logging.getLogger('nb')",
        "for fold in range(3):\n    log.info('fold %d done', fold)\n",
        "fold",
    ),
    case(
        "log_kernel_handler",
        "logging",
        LIST_HANDLER,
        "for step in range(3):\n    nb_log.info('step %d', step)\n",
        "handler.records",
    ),
    case(
        "log_inside_function",
        "logging",
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s',"
        " force=True)\n"
        "def process(i):\n    logging.getLogger('nb').info('item %d', i)\n    return i * i\n",
        "squares = []\nfor i in range(3):\n    squares.append(process(i))\n",
        "squares",
    ),
    # ------------------------------------------------------------------ exceptions
    case(
        "exc_notebook_class_caught",
        "exceptions",
        ERRORS,
        "ok = []\nfor v in [3, 1, -2, 5]:\n    ok.append(check(v))\n",
        "ok",
        "caught",
        after="try:\n    raise sys.last_value\nexcept DataError:\n    caught = True\n"
        "except Exception as e:\n    caught = type(e).__name__\n",
        error=True,
    ),
    case(
        "exc_caught_inside_body",
        "exceptions",
        ERRORS,
        "res = []\nfor v in [3, -1, 2]:\n    try:\n        res.append(check(v))\n"
        "    except DataError as e:\n        res.append(str(e))\n",
        "res",
    ),
    case(
        "exc_builtin_keyerror",
        "exceptions",
        "lookup = {'a': 1, 'b': 2}",
        "vals = []\nfor k in ['a', 'b', 'z', 'a']:\n    vals.append(lookup[k])\n",
        "vals",
        "k",
        error=True,
    ),
    # ------------------------------------------------------------------ current code
    case(
        "mod_beside_notebook",
        "modules",
        HELPERS,
        "feats = []\nfor x in range(4):\n    feats.append(nbhelpers.feat(x))\n",
        "feats",
    ),
    case(
        "mod_folder_on_sys_path",
        "modules",
        LIB,
        "names = []\nfor s in ['  Ada ', 'GRACE']:\n    names.append(clean(s))\n",
        "names",
    ),
    case(
        "mod_reloaded",
        "modules",
        (RELOAD_V1, RELOAD_WARM, RELOAD_V2),
        "scaled = []\nfor x in range(4):\n    scaled.append(scaling.scale(x))\n",
        "scaled",
    ),
    # ------------------------------------------------------------------ comprehensions
    case(
        "comp_dict_lengths",
        "comprehension",
        "words = ['alpha', 'be', 'gamma', 'pi']",
        "lengths = {w: len(w) for w in words}\n",
        "lengths",
    ),
    case(
        "comp_list_last_expression",
        "comprehension",
        "def slow_square(x):\n    return x * x\n",
        "[slow_square(i) for i in range(6)]\n",
        "_",
    ),
]

#: One case per category, also run on the threads and multiprocessing backends.
SUBSET = [
    "sk_fit_each_estimator",
    "pd_feature_on_both_frames",
    "rnd_np_seed_before_loop",
    "rnd_default_rng_captured",
    "plot_per_group_show",
    "disp_head_of_each_frame",
    "text_tokens",
    "acc_nested_pairs_total",
    "warn_ignored_before_loop",
    "log_basic_config",
    "exc_notebook_class_caught",
    "mod_beside_notebook",
    "comp_dict_lengths",
]
