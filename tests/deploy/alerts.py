"""The checks of tests/deploy/alerts.sh that promtool does not make (run with the pyyaml tool's
python, from the repository's root):

  alerts.py check RULES PROMETHEUS_RULE SERIES CONFIG TESTS...
      - the PrometheusRule is one, and its spec.groups equal RULES' groups;
      - every metric an expression selects is one the processes export (SERIES, one name a
        line), or `up`; no `__name__` matchers; no unknown functions;
      - every `job` the rules match or set is a job of the build (CONFIG: `config show`);
      - the lag metrics are aggregated as README "Metrics" says: the processor group's
        partition lag with sum, a downstream group's lag never with sum;
      - every alert has severity critical|warning and summary, description, runbook (naming
        a README section);
      - the TESTS files together show every alert firing and not firing, and name no alert
        that does not exist (promtool would pass `exp_alerts: []` for a misspelt alertname).
  alerts.py schema CRD OUT
      writes the openAPIV3Schema of the CRD's v1 version to OUT as a JSON schema, strict:
      objects with declared properties reject unknown ones (as `kubectl apply
      --validate=strict` does), so a misspelt field fails instead of being pruned.
"""

import json
import re
import sys
import tomllib

import yaml

import promql

ALLOWED_METRICS = {"up"}
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = ("summary", "description", "runbook")

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def jobs_of_build(config_path):
    with open(config_path, "rb") as f:
        cfg = tomllib.load(f)
    return {name.replace("_", "-") for name in cfg.get("jobs", {})}


def diff(a, b, path="groups"):
    """The first place where a and b differ, as a path."""
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'rules.yml' if k in a else 'the PrometheusRule'}"
            d = diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            name = x.get("alert") or x.get("record") or x.get("name") if isinstance(x, dict) else None
            d = diff(x, y, f"{path}[{i}{' ' + name if name else ''}]")
            if d:
                return d
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        return None
    if a != b:
        return f"{path}: {a!r} vs {b!r}"
    return None


def check_expr(where, expr, series, jobs):
    for what in promql.naming_problems(promql.analyse(expr), series, jobs, ALLOWED_METRICS):
        problem(where, what)

def check(rules_path, prule_path, series_path, config_path, *tests_paths):
    with open(series_path, encoding="utf-8") as f:
        series = {line.strip() for line in f if line.strip()}
    if not series:
        problem(series_path, "the list of exported series is empty")
    jobs = jobs_of_build(config_path)
    if not jobs:
        problem(config_path, "`config show` lists no jobs")

    rules = load_yaml(rules_path)
    prule = load_yaml(prule_path)
    if not isinstance(rules, dict) or not isinstance(rules.get("groups"), list):
        problem(rules_path, "no `groups` list")
        return
    if not isinstance(prule, dict) or prule.get("apiVersion") != "monitoring.coreos.com/v1" or prule.get("kind") != "PrometheusRule":
        problem(prule_path, "not a monitoring.coreos.com/v1 PrometheusRule")
    else:
        d = diff(rules["groups"], (prule.get("spec") or {}).get("groups"))
        if d:
            problem(prule_path, f"spec.groups differ from {rules_path}'s groups (keep them identical): first difference at {d}")
        extra = set(rules) - {"groups"}
        if extra:
            problem(rules_path, f"keys besides `groups`: {sorted(extra)}")

    alerts = {}
    for g in rules["groups"]:
        for i, r in enumerate(g.get("rules") or []):
            name = r.get("alert") or r.get("record")
            where = f"{rules_path}: group {g.get('name')} rule {i} ({name})"
            check_expr(where, str(r.get("expr", "")), series, jobs)
            labels = r.get("labels") or {}
            if "job" in labels and labels["job"] not in jobs:
                problem(where, f"label job={labels['job']!r} is not a job of this build")
            if "alert" in r:
                alerts.setdefault(r["alert"], []).append(where)
                if labels.get("severity") not in SEVERITIES:
                    problem(where, f"severity {labels.get('severity')!r}: one of {sorted(SEVERITIES)}")
                ann = r.get("annotations") or {}
                for k in ANNOTATIONS:
                    if not str(ann.get(k, "")).strip():
                        problem(where, f"no annotation {k}")
                if "README" not in str(ann.get("runbook", "")):
                    problem(where, "the runbook annotation names no README section")

    firing, quiet = set(), set()
    for tests_path in tests_paths:
        for t in load_yaml(tests_path).get("tests") or []:
            for at in t.get("alert_rule_test") or []:
                name = at.get("alertname")
                if name not in alerts:
                    problem(tests_path, f"test {t.get('name')!r} at {at.get('eval_time')}: no alert {name!r} in {rules_path}")
                (firing if at.get("exp_alerts") else quiet).add(name)
    where = " + ".join(tests_paths)
    for name in sorted(alerts):
        if name not in firing:
            problem(where, f"no test shows {name} firing")
        if name not in quiet:
            problem(where, f"no test shows {name} not firing")


def case_insensitive(pattern):
    """A Go regular expression with the inline flag (?i) (ECMA-262, which JSON schema uses,
    has no inline flags): the flag dropped and each letter matched in both cases."""
    if "(?i)" not in pattern:
        return pattern
    rest = pattern.replace("(?i)", "")
    if "[" in rest or "\\" in rest:
        return None  # not rewritten: the pattern is left out
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in rest)


def strict(schema):
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            p = case_insensitive(schema["pattern"])
            if p is None:
                del schema["pattern"]
            else:
                schema["pattern"] = p
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict(v)
    elif isinstance(schema, list):
        for v in schema:
            strict(v)
    return schema


def schema(crd_path, out_path):
    crd = load_yaml(crd_path)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    s = strict(version["schema"]["openAPIV3Schema"])
    # A CRD's metadata is `type: object` without properties (the API server checks it):
    # ObjectMeta's fields, so a misspelt one fails here too.
    s["properties"]["metadata"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **{k: {"type": "string"} for k in ("name", "namespace", "generateName", "uid", "resourceVersion",
                                                "creationTimestamp", "deletionTimestamp", "selfLink")},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            **{k: {"type": "integer"} for k in ("generation", "deletionGracePeriodSeconds")},
            **{k: {"type": "array"} for k in ("finalizers", "ownerReferences", "managedFields")},
        },
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(s, f)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "schema":
        schema(*args)
        sys.exit(0)
    check(*args)
    for p in problems:
        print(f"alerts: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)
