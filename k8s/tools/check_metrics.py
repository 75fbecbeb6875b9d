#!/usr/bin/env python3
"""Checks that alert rules and Grafana dashboards use only metrics and labels the services export.

    check_metrics.py --scrape SCRAPE [--scrape SCRAPE …] [--ignore-values] FILE…
    check_metrics.py --self-test

SCRAPE: a saved /metrics response (Prometheus text format), e.g.
    curl -s localhost:8080/metrics > orchestrator.prom
Give one per service (and per scenario: a counter appears only once it was first incremented, so
scrape after the sagas, failures and dead letters the expressions refer to have happened).

FILE: what to check —
  - a Prometheus rules file (`groups:` at the top) or a PrometheusRule manifest (`.spec.groups`),
    several YAML documents allowed (a rendered kustomization too; other kinds are skipped);
  - a Grafana dashboard JSON (panel `targets[].expr` and templating queries such as
    `label_values(metric, label)`), or a ConfigMap manifest carrying one in a `*.json` key.

Every PromQL expression is parsed for metric selectors and label names. It exits 1, naming each,
when an expression uses
  - a metric name that no scrape contains (a histogram's `_bucket`, `_sum` and `_count` exist when
    the scrape has them; names recorded by a `record:` rule in the checked files count as known);
  - a label in a selector `{label…}` that no series of that metric carries;
  - a value in an `=` or `=~` matcher that no series of that metric has (for `=~`, each
    alternative of a plain `a|b|c` alternation; otherwise at least one value must match).
    `--ignore-values` checks label names only. Values holding a Grafana variable ($x) are skipped;
  - a label in `by (…)` / `without (…)` that none of the aggregated metrics carries, or in
    `on (…)` / `ignoring (…)` / `group_left (…)` / `group_right (…)` that no metric of the
    expression carries.
Labels Prometheus adds when it scrapes or that histograms and summaries carry are ignored:
job, instance, namespace, pod, le, quantile (and the prometheus-operator's service, container,
endpoint). Functions, aggregations, keywords and Grafana variables are not metric names.

Exit status: 0 all used names exist; 1 problems found (each printed as `MISSING …`); 2 bad usage
or unreadable input. scripts/k8s-validate.sh runs it (and its tests, k8s/tools/test_check_metrics.py)
against k8s/tools/testdata/metrics-inventory.prom, the documented inventory of every metric.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

IGNORED_LABELS = frozenset({"job", "instance", "namespace", "pod", "le", "quantile",
                            "service", "container", "endpoint"})

AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                          "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                      "bool", "and", "or", "unless", "atan2", "inf", "nan", "start", "end"})
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Functions that make up labels of their own: grouping labels above them are not checked.
LABEL_MAKERS = frozenset({"label_replace", "label_join", "count_values"})


# ------------------------------------------------------------------------------------ scrapes

@dataclass
class Inventory:
    """Metric name → label name → values seen, from one or more scrapes."""
    metrics: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)

    def add_scrape(self, text: str, source: str = "scrape"):
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+", line)
            if not m:
                raise ValueError(f"{source}:{n}: not a Prometheus sample line: {line[:80]}")
            labels = self.metrics.setdefault(m.group(1), {})
            for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"', m.group(3) or ""):
                labels.setdefault(k, set()).add(_unescape(v))

    def has(self, name: str) -> bool:
        return name in self.metrics or name in self.recorded


def _unescape(v: str) -> str:
    return v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


# ------------------------------------------------------------------------------------- PromQL

TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|s|m|h|d|w|y)?(?:\d+(?:ms|s|m|h|d|w|y))*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])
""", re.X)


@dataclass
class Tok:
    kind: str
    text: str


def tokenize(expr: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot parse PromQL near {expr[pos:pos + 30]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append(Tok(m.lastgroup, m.group()))
    return out


@dataclass
class Selector:
    name: str | None
    matchers: list[tuple[str, str, str]]  # (label, op, value)
    start: int  # token index


@dataclass
class Grouping:
    keyword: str
    labels: list[str]
    selectors: list[Selector]  # the metrics whose labels these must be among
    makes_labels: bool


def _string_value(tok: Tok) -> str:
    s = tok.text[1:-1]
    return s if tok.text[0] == "`" else _unescape(s).replace("\\'", "'")


def _matching(toks: list[Tok], i: int, open_: str = "(", close: str = ")") -> int:
    """Index of the token closing the bracket opened at i."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].text == open_:
            depth += 1
        elif toks[j].text == close:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced brackets")


def _label_list(toks: list[Tok], i: int) -> tuple[list[str], int]:
    """Labels in the parenthesised list starting at i; returns them and the index after it."""
    if i >= len(toks) or toks[i].text != "(":
        return [], i
    end = _matching(toks, i)
    return [t.text for t in toks[i + 1:end] if t.kind in ("ident", "string")], end + 1


def parse(expr: str) -> tuple[list[Selector], list[Grouping]]:
    toks = tokenize(expr)
    selectors: list[Selector] = []
    label_list_spans: set[int] = set()
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "ident" and t.text.lower() in LABEL_LIST_KEYWORDS:
            _, after = _label_list(toks, i + 1)
            label_list_spans.update(range(i + 1, after))
            i = after
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.kind == "ident" and t.text.lower() not in KEYWORDS and not (nxt and nxt.text == "("):
            # `sum by (x) (…)`: an aggregation followed by its grouping, not a metric.
            if t.text.lower() in AGGREGATIONS and nxt and nxt.kind == "ident" and nxt.text.lower() in ("by", "without"):
                i += 1
                continue
            matchers, after = [], i + 1
            if nxt and nxt.text == "{":
                matchers, after = _matchers(toks, i + 1)
            selectors.append(Selector(t.text, matchers, i))
            i = after
            continue
        if t.text == "{":  # a selector without a name: {__name__="…", …}
            matchers, after = _matchers(toks, i)
            names = [v for (k, op, v) in matchers if k == "__name__" and op == "="]
            selectors.append(Selector(names[0] if names else None,
                                      [m for m in matchers if m[0] != "__name__"], i))
            i = after
            continue
        i += 1
    groupings = _groupings(toks, selectors)
    return selectors, groupings


def _matchers(toks: list[Tok], i: int) -> tuple[list[tuple[str, str, str]], int]:
    end = _matching(toks, i, "{", "}")
    inner = toks[i + 1:end]
    out, j = [], 0
    while j < len(inner):
        if j + 2 >= len(inner):
            raise ValueError(f"incomplete label matcher {' '.join(x.text for x in inner[j:])!r}")
        label, op, value = inner[j], inner[j + 1], inner[j + 2]
        if label.kind not in ("ident", "string") or op.text not in ("=", "!=", "=~", "!~") or value.kind != "string":
            raise ValueError(f"cannot parse label matcher near {' '.join(x.text for x in inner[j:j + 3])!r}")
        out.append((label.text if label.kind == "ident" else _string_value(label), op.text, _string_value(value)))
        j += 3
        if j < len(inner) and inner[j].text == ",":
            j += 1
    return out, end + 1


def _groupings(toks: list[Tok], selectors: list[Selector]) -> list[Grouping]:
    out = []
    for i, t in enumerate(toks):
        if t.kind != "ident":
            continue
        low = t.text.lower()
        if low in AGGREGATIONS and i + 1 < len(toks):
            # AGG [by|without (l…)] ( args ) [by|without (l…)]
            j, labels, keyword = i + 1, [], None
            if toks[j].kind == "ident" and toks[j].text.lower() in ("by", "without"):
                keyword = toks[j].text.lower()
                labels, j = _label_list(toks, j + 1)
            if j >= len(toks) or toks[j].text != "(":
                continue
            end = _matching(toks, j)
            if keyword is None and end + 1 < len(toks) and toks[end + 1].kind == "ident" \
                    and toks[end + 1].text.lower() in ("by", "without"):
                keyword = toks[end + 1].text.lower()
                labels, _ = _label_list(toks, end + 2)
            if keyword:
                inside = [s for s in selectors if j < s.start < end]
                makes = any(x.kind == "ident" and x.text in LABEL_MAKERS for x in toks[j:end])
                out.append(Grouping(keyword, labels, inside, makes))
        elif low in ("on", "ignoring", "group_left", "group_right"):
            labels, _ = _label_list(toks, i + 1)
            makes = any(x.kind == "ident" and x.text in LABEL_MAKERS for x in toks)
            out.append(Grouping(low, labels, list(selectors), makes))
    return out


# ------------------------------------------------------------------------------------- checks

def check_expression(expr: str, inv: Inventory, ignore_values: bool = False) -> list[str]:
    """Problems with one expression (empty when everything it uses exists)."""
    try:
        selectors, groupings = parse(expr)
    except ValueError as e:
        return [f"unparsable expression: {e}"]
    problems: list[str] = []

    def once(msg):
        if msg not in problems:
            problems.append(msg)

    for s in selectors:
        if s.name is None:
            once("a selector without a metric name: name the metric")
            continue
        if not inv.has(s.name):
            once(f"metric {s.name} is not in any scrape")
            continue
        labels = inv.metrics.get(s.name)
        if labels is None:  # a recorded series: its labels are not known here
            continue
        for label, op, value in s.matchers:
            if label in IGNORED_LABELS:
                continue
            if label not in labels:
                have = ", ".join(sorted(labels)) or "none"
                once(f"label {label} of metric {s.name} is not in any scrape (it has: {have})")
                continue
            if ignore_values or op in ("!=", "!~") or "$" in value or value == "":
                continue
            seen = labels[label]
            if op == "=":
                if value not in seen:
                    once(f'value {label}="{value}" of metric {s.name} is not in any scrape '
                         f"(values: {', '.join(sorted(seen))})")
            else:
                alternatives = value.split("|")
                if all(re.fullmatch(r"[A-Za-z0-9_ .:/-]+", a) for a in alternatives):
                    for a in alternatives:
                        if a not in seen:
                            once(f'value {label}=~"…{a}…" of metric {s.name} is not in any scrape '
                                 f"(values: {', '.join(sorted(seen))})")
                else:
                    try:
                        rx = re.compile(value)
                    except re.error:
                        once(f'{label}=~"{value}" is not a valid regular expression')
                        continue
                    if not any(rx.fullmatch(v) for v in seen):
                        once(f'no value of label {label} of metric {s.name} matches "{value}" '
                             f"(values: {', '.join(sorted(seen))})")
    for g in groupings:
        if g.makes_labels:
            continue
        known = [inv.metrics[s.name] for s in g.selectors if s.name and s.name in inv.metrics]
        if not known:
            continue  # unknown metrics are reported above; recorded ones have no known labels
        for label in g.labels:
            if label in IGNORED_LABELS:
                continue
            if not any(label in labels for labels in known):
                names = sorted({s.name for s in g.selectors if s.name in inv.metrics})
                once(f"label {label} in {g.keyword} (…) is not a label of {', '.join(names)} in any scrape")
    return problems


# -------------------------------------------------------------------------------------- input

def expressions_from_rules(doc: dict) -> list[tuple[str, str]]:
    """(where, expr) of every rule in a rules file or a PrometheusRule."""
    groups = None
    if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
        groups = (doc.get("spec") or {}).get("groups")
    elif isinstance(doc, dict) and "groups" in doc:
        groups = doc["groups"]
    out = []
    for g in groups or []:
        for r in g.get("rules") or []:
            what = f"alert {r['alert']}" if "alert" in r else f"record {r.get('record')}"
            out.append((f"group {g.get('name')}: {what}", str(r.get("expr", ""))))
    return out


def recorded_names(doc: dict) -> set[str]:
    groups = ((doc.get("spec") or {}).get("groups") if doc.get("kind") == "PrometheusRule"
              else doc.get("groups")) if isinstance(doc, dict) else None
    return {r["record"] for g in groups or [] for r in g.get("rules") or [] if "record" in r}


def expressions_from_dashboard(dash: dict) -> list[tuple[str, str]]:
    if "dashboard" in dash and "panels" not in dash:
        dash = dash["dashboard"]
    out = []

    def panels(ps):
        for p in ps or []:
            yield p
            yield from panels(p.get("panels"))

    for p in panels(dash.get("panels")):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t["expr"]))
    for v in (dash.get("templating") or {}).get("list") or []:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") != "query" or not isinstance(q, str):
            continue
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q)
        if m:
            # label_values(selector, label): the label must be one the selector's metric has.
            out.append((f"variable {v.get('name')}", f"max by ({m.group(2)}) ({m.group(1)})"))
            continue
        m = re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", q)
        out.append((f"variable {v.get('name')}", m.group(1) if m else q))
    return out


def load_file(path: Path) -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expr) pairs and recorded names from one rules, manifest or dashboard file."""
    import yaml  # only needed here, so the scrape parser has no dependency

    text = path.read_text()
    if path.suffix == ".json":
        return [(f"{path.name}: {w}", e) for w, e in expressions_from_dashboard(json.loads(text))], set()
    exprs, recorded = [], set()
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict):
            continue
        recorded |= recorded_names(doc)
        exprs += [(f"{path.name}: {w}", e) for w, e in expressions_from_rules(doc)]
        if doc.get("kind") == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if key.endswith(".json"):
                    exprs += [(f"{path.name}: {key}: {w}", e)
                              for w, e in expressions_from_dashboard(json.loads(value))]
    return exprs, recorded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrape", action="append", default=[], metavar="SCRAPE",
                    help="a saved /metrics response; repeat for several")
    ap.add_argument("--ignore-values", action="store_true", help="check label names, not label values")
    ap.add_argument("--self-test", action="store_true", help="run the unit tests and exit")
    ap.add_argument("files", nargs="*", metavar="FILE")
    args = ap.parse_args(argv)
    if args.self_test:
        import unittest
        here = Path(__file__).resolve().parent
        suite = unittest.defaultTestLoader.discover(str(here), pattern="test_check_metrics.py")
        return 0 if unittest.TextTestRunner(verbosity=1).run(suite).wasSuccessful() else 1
    if not args.scrape or not args.files:
        ap.error("give at least one --scrape and one FILE")
    inv = Inventory()
    try:
        for s in args.scrape:
            inv.add_scrape(Path(s).read_text(), s)
        loaded = [load_file(Path(f)) for f in args.files]
    except (OSError, ValueError) as e:
        print(f"check_metrics: {e}", file=sys.stderr)
        return 2
    for _, recorded in loaded:
        inv.recorded |= recorded
    exprs = [x for found, _ in loaded for x in found]
    problems = 0
    for where, expr in exprs:
        for p in check_expression(expr, inv, args.ignore_values):
            print(f"MISSING {where}: {p}")
            problems += 1
    names = {s.name for _, e in exprs for s in _safe_selectors(e) if s.name}
    verdict = f"{problems} problem(s)" if problems else "every metric and label exists"
    print(f"check_metrics: {len(exprs)} expression(s) in {len(args.files)} file(s) use {len(names)} "
          f"metric name(s); against {len(args.scrape)} scrape(s) with {len(inv.metrics)} name(s): {verdict}")
    return 1 if problems else 0


def _safe_selectors(expr: str) -> list[Selector]:
    try:
        return parse(expr)[0]
    except ValueError:
        return []


if __name__ == "__main__":
    sys.exit(main())
