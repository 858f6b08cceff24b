#!/usr/bin/env bash
# Checks docs/asyncapi.yaml, the AsyncAPI document of every topic (run from the repository's
# root by `cargo test --test deploy asyncapi`; SJ_BIN is the built scheduled-jobs, optional):
#
# 1. Its only file references are schemas of avro/ ('../avro/<Name>.avsc'; nothing the CLI
#    would fetch), and each parses as Avro (avsc, the library of the CLI's Avro schema parser:
#    for AsyncAPI 3 documents the CLI itself checks only the Avro JSON's shape, so an undefined
#    type name would pass it).
# 2. The AsyncAPI CLI (pinned, scripts/tools/asyncapi.sh) validates it: AsyncAPI 3.0.0, the
#    Kafka bindings, the $refs (the Avro payloads in avro/ included) and the Avro schemas'
#    structure; warnings fail too. Its analytics and update check are off and its home is a
#    scratch directory: it makes no network connection (checked with strace: no connect()).
# 3. It agrees with the repository: one channel per topics/*.toml, addressed by the topic's
#    name, and none for a topic that has no file; src/wire/topic.rs names the same topics;
#    each channel's one message carries the value schema the code writes to that topic (the
#    topic file's value_schema, which `schemas register` registers as `<topic>-value` and the
#    codec encodes with; for event topics also the .avsc src/wire/events.rs builds the event
#    from), its message name is that schema's record name, its key is the topic file's key;
#    partitions, replication and every config in the Kafka channel bindings equal the topic
#    file's; every channel has an operation that sends and one that receives; the local server
#    and its registry are the binary's built-in defaults (`$SJ_BIN config show`).
#
# Exits non-zero naming each problem.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
doc=docs/asyncapi.yaml

fail() { echo "asyncapi.sh: FAIL: $*" >&2; exit 1; }
[[ -f $doc ]] || fail "$doc is missing"

asyncapi=$(scripts/tools.sh asyncapi) || fail "cannot install the AsyncAPI CLI (scripts/tools.sh asyncapi)"
node_modules=$(cd "$(dirname "$asyncapi")/.." && pwd)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- 1. the document as data; its references; every referenced .avsc parsed as Avro ---------
# First, so that a reference the CLI would fetch over the network never reaches it.
# js-yaml and avsc are resolved from the packages that use them in the pinned CLI's tree.
node - "$doc" "$scratch/doc.json" "$node_modules" <<'JS' || fail "$doc: not readable, or its references or the Avro schemas they name are wrong (above)"
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const [doc, out, nodeModules] = process.argv.slice(2);
const fromCli = createRequire(path.join(nodeModules, '@asyncapi/cli/package.json'));
const fromAvro = createRequire(path.join(nodeModules, '@asyncapi/avro-schema-parser/package.json'));
const yaml = fromCli('js-yaml');
const avsc = fromAvro('avsc');
let data;
try {
  data = yaml.load(fs.readFileSync(doc, 'utf8'));
} catch (e) {
  console.error(`asyncapi.sh: ${doc}: not YAML: ${e.message}`);
  process.exit(1);
}
const problems = [];
const files = new Set();
(function walk(v, at) {
  if (Array.isArray(v)) return v.forEach((x, i) => walk(x, `${at}[${i}]`));
  if (v === null || typeof v !== 'object') return;
  for (const [k, x] of Object.entries(v)) {
    if (k === '$ref' && typeof x === 'string' && !x.startsWith('#/')) {
      // Only the repository's own schemas: anything else would be fetched, or is a typo.
      if (/^\.\.\/avro\/[A-Za-z0-9_]+\.avsc$/.test(x)) files.add(x);
      else problems.push(`${at}.$ref: '${x}' is neither local ('#/...') nor a schema of avro/ ('../avro/<Name>.avsc')`);
    }
    walk(x, `${at}.${k}`);
  }
})(data, '$');
for (const ref of [...files].sort()) {
  const file = path.join(path.dirname(doc), ref);
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    problems.push(`'${ref}': cannot read ${file}: ${e.code || e.message}`);
    continue;
  }
  try {
    avsc.Type.forSchema(JSON.parse(text));
  } catch (e) {
    problems.push(`${file} (referenced as '${ref}'): not a valid Avro schema: ${e.message}`);
  }
}
fs.writeFileSync(out, JSON.stringify(data));
if (problems.length) {
  problems.forEach(p => console.error(`asyncapi.sh: ${p}`));
  process.exit(1);
}
JS

# --- 2. asyncapi validate -----------------------------------------------------------------
# The CLI writes an analytics id into $HOME and, unless told, sends usage metrics and checks
# for a newer version over the network: the settings file below turns analytics off, CI=true
# is a second switch for the same, ASYNCAPI_SKIP_NEW_VERSION_CHECK stops the update check, and
# HOME / XDG_* keep its files (analytics id, contexts, oclif cache) out of the user's home.
echo '{"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "scheduled-jobs-check"}' >"$scratch/analytics.json"
mkdir -p "$scratch/home"
validate() {
  env HOME="$scratch/home" XDG_CONFIG_HOME="$scratch/home/.config" XDG_CACHE_HOME="$scratch/home/.cache" \
    XDG_DATA_HOME="$scratch/home/.local/share" CI=true ASYNCAPI_METRICS_CONFIG_PATH="$scratch/analytics.json" \
    ASYNCAPI_SKIP_NEW_VERSION_CHECK=true NODE_ENV=production NO_COLOR=1 FORCE_COLOR=0 \
    timeout 120 "$asyncapi" validate "$doc" --fail-severity=warn --diagnostics-format=stylish
}
rc=0
out=$(validate 2>&1) || rc=$?
if ((rc == 124)); then
  echo "$out" >&2
  fail "asyncapi validate $doc: no answer within 120 s"
elif ((rc != 0)); then
  echo "$out" >&2
  fail "asyncapi validate $doc: not a valid AsyncAPI document, or a warning (diagnostics above, exit status $rc)"
fi

# --- 3. the document against the repository ------------------------------------------------
defaults=""
if [[ -n ${SJ_BIN:-} ]]; then
  [[ $SJ_BIN = /* ]] || SJ_BIN=$PWD/$SJ_BIN
  # The built-in defaults: no configuration file (run elsewhere), no SJ_* variables.
  defaults=$(cd "$scratch" && env -i PATH="$PATH" HOME="$scratch/home" "$SJ_BIN" config show) ||
    fail "\$SJ_BIN config show failed"
fi

DEFAULTS=$defaults python3 - "$scratch/doc.json" <<'PY'
import json, os, re, sys, tomllib
from pathlib import Path

doc = json.load(open(sys.argv[1]))
DOC = "docs/asyncapi.yaml"
AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
problems = []

def problem(msg):
    problems.append(msg)

def deref(node):
    """A local '#/a/b' reference of the document, or the node itself."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target = doc
        for part in node["$ref"][2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return None
            target = target[part]
        return deref(target)
    return node

# The topics, from topics/*.toml (the overlays in topics/overrides/ are not topics).
topics = {}
for f in sorted(Path("topics").glob("*.toml")):
    t = tomllib.loads(f.read_text())
    if t.get("name") != f.stem:
        problem(f"{f}: name `{t.get('name')}` differs from its file name")
    topics[f.stem] = t
if not topics:
    sys.exit("asyncapi.sh: FAIL: no topics/*.toml found (run from the repository's root)")

# The topics the code knows (src/wire/topic.rs).
code_topics = set(re.findall(r'Topic::named\("([^"]+)"\)', Path("src/wire/topic.rs").read_text()))
for name in sorted(code_topics - topics.keys()):
    problem(f"src/wire/topic.rs names topic `{name}`, which has no topics/{name}.toml")
for name in sorted(topics.keys() - code_topics):
    problem(f"topics/{name}.toml is a topic src/wire/topic.rs does not name")
consts = dict(re.findall(r'pub const (\w+): Topic = Topic::named\("([^"]+)"\)', Path("src/wire/topic.rs").read_text()))

# What the events are built from (src/wire/events.rs): impl Event for X { TOPIC; schema() }.
events_rs = Path("src/wire/events.rs").read_text()
statics = dict(re.findall(r'static (\w+): Avsc =\s*Avsc::new\(\s*"([^"]+)"', events_rs))
event_schema = {}
for body in re.findall(r'impl Event for \w+ \{(.*?)\n\}', events_rs, re.S):
    t = re.search(r'const TOPIC: Topic = Topic::(\w+);', body)
    s = re.search(r'fn schema\(\) -> &\'static Avsc \{\s*&(\w+)', body)
    if not (t and s and t.group(1) in consts and s.group(1) in statics):
        problem("src/wire/events.rs: cannot read an `impl Event` block's topic and schema (did its shape change? update tests/deploy/asyncapi.sh)")
        continue
    event_schema[consts[t.group(1)]] = statics[s.group(1)]
if not event_schema:
    problem("src/wire/events.rs: found no `impl Event for ...` (did its shape change? update tests/deploy/asyncapi.sh)")
for name, avsc in sorted(event_schema.items()):
    if name in topics and topics[name].get("value_schema") != avsc:
        problem(f"src/wire/events.rs writes {avsc} to `{name}`, but topics/{name}.toml registers {topics[name].get('value_schema')}")

def record_of(avsc):
    p = Path("avro") / avsc
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        problem(f"{p}: cannot read: {e}")
        return None

def config_text(v):
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)

channels = doc.get("channels") or {}
by_address = {}
for cid, ch in channels.items():
    ch = deref(ch) or {}
    by_address.setdefault(ch.get("address"), []).append(cid)

for address, ids in sorted(by_address.items(), key=lambda kv: str(kv[0])):
    if address not in topics:
        problem(f"channel(s) {', '.join(ids)}: address `{address}` is no topic of topics/*.toml")
    elif len(ids) > 1:
        problem(f"topic `{address}` has {len(ids)} channels ({', '.join(ids)}), not one")
for name in sorted(topics.keys() - by_address.keys()):
    problem(f"topic `{name}` (topics/{name}.toml) has no channel with address `{name}` in {DOC}")

ops = doc.get("operations") or {}
for cid, ch in sorted(channels.items()):
    ch = deref(ch) or {}
    name = ch.get("address")
    if name not in topics:
        continue
    t = topics[name]
    where = f"channel `{cid}` ({name})"
    # The message: exactly one (one value schema per topic: the topic name strategy).
    msgs = ch.get("messages") or {}
    if len(msgs) != 1:
        problem(f"{where}: has {len(msgs)} messages, expected exactly one (topics/{name}.toml has one value schema)")
    for mid, m in msgs.items():
        m = deref(m)
        if not isinstance(m, dict):
            problem(f"{where}: message `{mid}` does not resolve")
            continue
        payload = deref(m.get("payload")) or {}
        fmt = payload.get("schemaFormat")
        ref = (payload.get("schema") or {}).get("$ref") if isinstance(payload.get("schema"), dict) else None
        want = f"../avro/{t['value_schema']}"
        if fmt != AVRO_FORMAT:
            problem(f"{where}: payload schemaFormat is `{fmt}`, expected `{AVRO_FORMAT}`")
        if ref != want:
            problem(f"{where}: payload references `{ref}`, but the code writes {t['value_schema']} to `{name}` (topics/{name}.toml value_schema) — expected $ref '{want}'")
        rec = record_of(t["value_schema"])
        if rec is not None and m.get("name") != rec.get("name"):
            problem(f"{where}: message name `{m.get('name')}` is not the record name `{rec.get('name')}` of avro/{t['value_schema']}")
        key = deref(((m.get("bindings") or {}).get("kafka") or {}).get("key"))
        if not isinstance(key, dict):
            problem(f"{where}: message `{mid}` has no Kafka binding key (topics/{name}.toml key: `{t['key']}`)")
        else:
            if key.get("type") != "string":
                problem(f"{where}: key type is `{key.get('type')}`, expected string (keys are UTF-8 text)")
            if key.get("title") != t["key"]:
                problem(f"{where}: key title `{key.get('title')}` differs from topics/{name}.toml key `{t['key']}`")
            if re.fullmatch(r"[A-Za-z]+", t["key"]) and rec is not None and t["key"] not in {f.get("name") for f in rec.get("fields", [])}:
                problem(f"{where}: key `{t['key']}` is no field of avro/{t['value_schema']}")
    # Partitions, replication and configs, as the topic file has them.
    b = ((ch.get("bindings") or {}).get("kafka")) or {}
    if b.get("partitions") != t["partitions"]:
        problem(f"{where}: Kafka binding partitions {b.get('partitions')}, topics/{name}.toml has {t['partitions']}")
    if b.get("replicas") != t["replication_factor"]:
        problem(f"{where}: Kafka binding replicas {b.get('replicas')}, topics/{name}.toml has replication_factor {t['replication_factor']}")
    have = {k: config_text(v) for k, v in (b.get("topicConfiguration") or {}).items()}
    want = {k: str(v) for k, v in (t.get("configs") or {}).items()}
    for k in sorted(want.keys() | have.keys()):
        if have.get(k) != want.get(k):
            problem(f"{where}: topicConfiguration `{k}` = {have.get(k)!r}, topics/{name}.toml configs has {want.get(k)!r}")
    # Someone writes it, someone reads it.
    actions = {(deref(o) or {}).get("action") for o in ops.values()
               if (deref(o) or {}).get("channel", {}).get("$ref") == f"#/channels/{cid}"}
    for a in ("send", "receive"):
        if a not in actions:
            problem(f"{where}: no operation with action `{a}`")

# The local server is what the binary connects to when nothing is configured.
defaults = os.environ.get("DEFAULTS", "")
if defaults:
    conf = tomllib.loads("\n".join(l for l in defaults.splitlines() if not l.startswith("#")))
    local = deref((doc.get("servers") or {}).get("local")) or {}
    if local.get("host") != conf["kafka"]["bootstrap_servers"]:
        problem(f"server `local`: host `{local.get('host')}`, but the built-in kafka.bootstrap_servers is `{conf['kafka']['bootstrap_servers']}`")
    reg = ((local.get("bindings") or {}).get("kafka") or {}).get("schemaRegistryUrl")
    if reg != conf["registry"]["url"]:
        problem(f"server `local`: schemaRegistryUrl `{reg}`, but the built-in registry.url is `{conf['registry']['url']}`")
else:
    print("asyncapi.sh: SJ_BIN not set: the local server is not compared with the built-in defaults")

for p in problems:
    print(f"asyncapi.sh: FAIL: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"asyncapi.sh: {DOC} is valid AsyncAPI and agrees with topics/ and src/wire: {len(topics)} topics, {len(ops)} operations")
PY
