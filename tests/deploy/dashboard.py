"""The checks of tests/deploy/dashboard.sh besides promtool's parse (run with the pyyaml tool's
python, from the repository's root):

  dashboard.py check DASHBOARD SERIES CONFIG RULES_OUT
      - the JSON parses; it has a title and uid, and a Prometheus datasource template variable
        that every panel and query uses;
      - panels (rows' nested panels too) have unique ids and unique, non-empty titles, and a
        grid position; every non-row panel has queries;
      - every query, with Grafana's variables replaced ($__rate_interval, $__interval,
        $__range by durations, any other variable by `x`), is written to RULES_OUT as a
        recording rule named after its panel and refId, for `promtool check rules` to parse;
      - every metric a query selects is one the processes export (SERIES), or `up`; every
        exported metric family is on the dashboard; `job` matchers name jobs of the build
        (CONFIG: `config show`); the lag metrics are aggregated as README "Metrics" says;
      - each run-duration panel of a job shows that job's timeout (CONFIG's
        jobs.<job>.timeout_secs, the defaults) as a threshold and as a `vector(<timeout>)`
        line, and the seed's three jobs have one.
"""

import json
import re
import sys
import tomllib

import promql

ALLOWED_METRICS = {"up"}
DURATION_PANEL_JOBS = ("order-expiration", "stock-sync", "daily-statistics")
DATASOURCE_REFS = {"${datasource}", "$datasource"}
FAMILY_SUFFIX = re.compile(r"_(bucket|sum|count)$")

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def rule_name(panel_id, title, ref):
    """dashboard:panel<id>_<title>:<refId>, a valid metric name that promtool's errors show."""
    def clean(s):
        return re.sub(r"[^A-Za-z0-9_]+", "_", str(s)).strip("_")
    return f"dashboard:panel{clean(panel_id)}_{clean(title)}:{clean(ref)}"


def uses_datasource_variable(ds):
    if isinstance(ds, str):
        return ds in DATASOURCE_REFS
    return isinstance(ds, dict) and ds.get("uid") in DATASOURCE_REFS


def check(dash_path, series_path, config_path, rules_out):
    try:
        with open(dash_path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        problem(dash_path, f"not JSON: {e}")
        return
    with open(series_path, encoding="utf-8") as f:
        series = {line.strip() for line in f if line.strip()}
    with open(config_path, "rb") as f:
        cfg = tomllib.load(f)
    jobs = {name.replace("_", "-"): v for name, v in cfg.get("jobs", {}).items()}

    for k in ("title", "uid"):
        if not dash.get(k):
            problem(dash_path, f"no {k}")
    variables = (dash.get("templating") or {}).get("list") or []
    ds_vars = [v for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if [v.get("name") for v in ds_vars] != ["datasource"]:
        problem(dash_path, "needs one template variable `datasource` of type datasource, query prometheus")

    rules, ids, titles, used = [], {}, {}, set()
    duration_jobs = set()
    for p in all_panels(dash.get("panels") or []):
        title = p.get("title") or ""
        where = f"{dash_path}: panel {p.get('id')} {title!r}"
        if not isinstance(p.get("id"), int):
            problem(where, "no integer id")
        elif p["id"] in ids:
            problem(where, f"id {p['id']} also used by {ids[p['id']]!r}")
        else:
            ids[p["id"]] = title
        if not title.strip():
            problem(where, "no title")
        elif title in titles:
            problem(where, "title used twice")
        else:
            titles[title] = p.get("id")
        if not isinstance(p.get("gridPos"), dict):
            problem(where, "no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            problem(where, "no queries")
        if not uses_datasource_variable(p.get("datasource")):
            problem(where, f"datasource {p.get('datasource')!r}: use the template variable ${{datasource}}")
        panel_jobs, vectors = set(), []
        for t in targets:
            ref = t.get("refId")
            twhere = f"{where} query {ref}"
            if "datasource" in t and not uses_datasource_variable(t["datasource"]):
                problem(twhere, f"datasource {t['datasource']!r}: use the template variable ${{datasource}}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problem(twhere, "no expr")
                continue
            expr = promql.substitute_grafana_variables(expr)
            rules.append({"record": rule_name(p.get("id"), title, ref), "expr": expr})
            m = re.fullmatch(r"\s*vector\(\s*([0-9.]+)\s*\)\s*", expr)
            if m:
                vectors.append(float(m.group(1)))
            a = promql.analyse(expr)
            for what in promql.naming_problems(a, series, jobs, ALLOWED_METRICS):
                problem(twhere, what)
            for s in a.selectors:
                if s.metric is None:
                    continue
                used.add(s.metric)
                if s.metric.startswith("scheduled_jobs_run_duration_seconds"):
                    panel_jobs |= {v for (l, op, v) in s.matchers if l == "job" and op == "="}
        if len(panel_jobs) == 1:
            job = next(iter(panel_jobs))
            duration_jobs.add(job)
            timeout = (jobs.get(job) or {}).get("timeout_secs")
            steps = (((p.get("fieldConfig") or {}).get("defaults") or {}).get("thresholds") or {}).get("steps") or []
            values = [s.get("value") for s in steps if s.get("value") is not None]
            if timeout is None:
                problem(where, f"no timeout_secs for {job} in `config show`")
            else:
                if float(timeout) not in [float(v) for v in values]:
                    problem(where, f"{job}'s timeout is {timeout} s (jobs.{job.replace('-', '_')}.timeout_secs); the panel's thresholds are {values}")
                if vectors != [float(timeout)]:
                    problem(where, f"{job}'s timeout is {timeout} s; the panel's timeout line is vector({', '.join(map(str, vectors)) or 'missing'})")
                if str(timeout) not in title:
                    problem(where, f"the title does not show {job}'s timeout ({timeout} s)")
        elif len(panel_jobs) > 1:
            problem(where, f"run durations of several jobs ({sorted(panel_jobs)}) against one timeout")
    for job in DURATION_PANEL_JOBS:
        if job not in duration_jobs:
            problem(dash_path, f"no run-duration panel for {job}")
    families = {FAMILY_SUFFIX.sub("", s) for s in series}
    shown = {FAMILY_SUFFIX.sub("", s) for s in used}
    for fam in sorted(families - shown):
        problem(dash_path, f"metric {fam} is exported but on no panel")
    with open(rules_out, "w", encoding="utf-8") as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "check":
        sys.exit(f"usage: {sys.argv[0]} check DASHBOARD SERIES CONFIG RULES_OUT")
    check(*sys.argv[2:])
    for p in problems:
        print(f"dashboard: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)
