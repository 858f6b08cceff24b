"""What a PromQL expression uses, for the deployment checks (tests/deploy/alerts.sh,
tests/deploy/dashboard.sh): the metric names it selects, its label matchers, the functions it
calls, and which aggregation each selector sits in. promtool parses the expressions (it has
no command that prints the syntax tree); this lexer only has to find names in text promtool
accepts, and it fails loudly on anything it does not understand.

Library:  analyse(expr) -> Analysis
CLI:      python promql.py EXPR...   prints what each expression uses (to debug the checks)
"""

import re
import sys
from dataclasses import dataclass, field

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
    "tanh", "time", "timestamp", "vector", "year",
    "start", "end",  # the @ modifier's start() / end()
}
# Followed by a list of label names in parentheses.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"} | LABEL_LIST_KEYWORDS

# Grafana's built-in interval variables, replaced by a duration before parsing; any other
# variable becomes `x` (inside a label value that is harmless; elsewhere it shows up as the
# unknown metric `x`).
GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600", "__interval_ms": "60000"}
_GRAFANA_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]")


def substitute_grafana_variables(expr):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return GRAFANA_DURATIONS.get(name, "x")
    return _GRAFANA_VAR.sub(repl, expr)


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)(?![A-Za-z0-9_:])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){}\[\],@])
    """,
    re.VERBOSE,
)


def tokens(expr):
    pos = 0
    out = []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read the expression at {expr[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        out.append((kind, m.group()))
    return out


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", r"\1", s[1:-1])


@dataclass
class Selector:
    metric: str
    matchers: list  # (label, op, value)
    aggregation: str  # the innermost enclosing aggregation operator, or None


@dataclass
class Analysis:
    selectors: list = field(default_factory=list)
    functions: set = field(default_factory=set)
    errors: list = field(default_factory=list)

    @property
    def metrics(self):
        return {s.metric for s in self.selectors if s.metric}

    def matchers(self, label):
        return [(op, v) for s in self.selectors for (l, op, v) in s.matchers if l == label]


def _matchers(toks, i, errors):
    """toks[i] is '{': returns (matchers, index after '}')."""
    out = []
    i += 1
    while i < len(toks) and toks[i][1] != "}":
        if toks[i][1] == ",":
            i += 1
            continue
        if i + 2 < len(toks) and toks[i][0] == "ident" and toks[i + 1][1] in ("=", "!=", "=~", "!~") and toks[i + 2][0] == "string":
            out.append((toks[i][1], toks[i + 1][1], unquote(toks[i + 2][1])))
            i += 3
        else:
            errors.append(f"cannot read the label matchers near {toks[i][1]!r}")
            i += 1
    return out, i + 1


def analyse(expr):
    a = Analysis()
    try:
        toks = tokens(expr)
    except ValueError as e:
        a.errors.append(str(e))
        return a
    stack = []  # owner of each open '(' : an aggregation, a function, or None
    pending = None  # an aggregation waiting for its '(' (after `by (...)`)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text.lower() in KEYWORDS:
            if text in LABEL_LIST_KEYWORDS and nxt == "(":
                depth, i = 0, i + 1
                while i < len(toks):  # skip the label list
                    depth += {"(": 1, ")": -1}.get(toks[i][1], 0)
                    i += 1
                    if depth == 0:
                        break
                continue
            i += 1
            continue
        if kind == "ident" and text in AGGREGATIONS:
            pending = text
            i += 1
            continue
        if kind == "ident" and nxt == "(":
            if text not in FUNCTIONS:
                a.errors.append(f"unknown function {text}()")
            a.functions.add(text)
            pending = text
            i += 1
            continue
        if kind == "ident" or text == "{":
            metric = None
            if kind == "ident":
                metric = text
                i += 1
            matchers = []
            if i < len(toks) and toks[i][1] == "{":
                matchers, i = _matchers(toks, i, a.errors)
            if any(l == "__name__" for (l, _, _) in matchers):
                a.errors.append("a `__name__` matcher: name the metric instead, so it can be checked")
            aggregation = next((o for o in reversed(stack) if o in AGGREGATIONS), None)
            a.selectors.append(Selector(metric, matchers, aggregation))
            continue
        if text == "[":
            while i < len(toks) and toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if text == "(":
            stack.append(pending)
            pending = None
        elif text == ")":
            if stack:
                stack.pop()
        i += 1
    return a


if __name__ == "__main__":
    for e in sys.argv[1:]:
        r = analyse(substitute_grafana_variables(e))
        for s in r.selectors:
            print(f"{s.metric} {s.matchers} in {s.aggregation}")
        print("functions:", sorted(r.functions), "errors:", r.errors)


PLAIN_JOB_ALTERNATION = re.compile(r"[A-Za-z0-9_-]+(\|[A-Za-z0-9_-]+)*")


def naming_problems(a, series, jobs, allowed=frozenset({"up"})):
    """What an analysed expression names wrongly, shared by the alert and dashboard checks:
    a metric the processes do not export (`series`, from exported_series), a lag series
    aggregated against README "Metrics", a `job` value that is not a job of this build."""
    out = list(a.errors)
    for s in a.selectors:
        if s.metric is None:
            out.append("a selector without a metric name")
            continue
        if s.metric not in series and s.metric not in allowed:
            out.append(f"unknown metric {s.metric} (not exported by the processes: see scheduled_jobs::runtime::metrics::exported_series; allowed besides: {', '.join(sorted(allowed))})")
        if s.metric == "scheduled_jobs_consumer_partition_lag" and s.aggregation not in ("sum", None):
            out.append(f"{s.metric} aggregated with {s.aggregation}: each partition is exported by one instance, so the group's lag is sum by (group, topic) (README Metrics)")
        if s.metric == "scheduled_jobs_consumer_group_lag" and s.aggregation in ("sum", "count", "avg"):
            out.append(f"{s.metric} aggregated with {s.aggregation}: every instance measures the same whole group, read it with max by (group, topic) (README Metrics)")
    for op, value in a.matchers("job"):
        if op in ("=~", "!~"):
            if not PLAIN_JOB_ALTERNATION.fullmatch(value):
                out.append(f'job{op}"{value}": only a plain alternation of job names can be checked')
                continue
            names = value.split("|")
        else:
            names = [value]
        out.extend(f'job{op}"{value}": {n!r} is not a job of this build (jobs: {", ".join(sorted(jobs))})' for n in names if n not in jobs)
    return out
