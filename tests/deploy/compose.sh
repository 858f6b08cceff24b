#!/usr/bin/env bash
# docker-compose.yml, checked without a container engine: validated against the Compose
# Specification's JSON schema (compose-go's, the loader of Docker Compose itself), then its
# wiring: every dependency names a service and waits on a health check the service has,
# the init service waits for every dependency to be healthy, two processors with distinct
# stable instance ids and two tick producers run after init succeeded, each publishing its
# metrics port, the registry keeps its schemas in PostgreSQL, Redis writes an AOF, Kafka
# serves SCRAM with the mechanism the tool uses and a user for it, and the tool's environment
# (defaults interpolated as Compose does) is configuration `scheduled-jobs config check`
# accepts. tests/it/compose.rs checks the ports and credentials against the tool's defaults
# and README.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
: "${SJ_BIN:?SJ_BIN: the built scheduled-jobs binary}"
file=${SJ_COMPOSE_FILE:-docker-compose.yml}

check_compose=$(scripts/tools.sh compose-spec)
"$check_compose" "$file"
# check-jsonschema's virtualenv has a YAML parser (ruamel.yaml) that applies merge keys.
python=$(dirname "$(scripts/tools.sh check-jsonschema)")/python

"$python" - "$file" "$SJ_BIN" <<'PY'
import os, re, subprocess, sys
from ruamel.yaml import YAML

path, binary = sys.argv[1], sys.argv[2]
doc = YAML(typ="safe").load(open(path))
services = doc["services"]
problems = []

def fail(msg):
    problems.append(msg)
    print("FAIL:", msg)

def interpolate(value):
    # ${VAR:-default} and ${VAR-default} take the default here (the variables are unset in
    # this check); $$ is a literal $.
    s = str(value)
    s = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)([^}]*)\}", lambda m: os.environ.get(m.group(1)) or m.group(3), s)
    if re.search(r"\$\{[^}]*\}|\$[A-Za-z_]", s.replace("$$", "")):
        fail(f"unresolved variable without a default: {value}")
    return s.replace("$$", "$")

def env(name):
    e = services[name].get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) for x in e)
    return {k: interpolate(v) for k, v in e.items()}

def command(name):
    c = services[name].get("command")
    return c if isinstance(c, list) else (c or "").split()

# Dependencies exist and wait on something the dependency has.
for name, svc in services.items():
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    for dep, how in deps.items():
        if dep not in services:
            fail(f"{name} depends on {dep}, which is not a service")
            continue
        cond = (how or {}).get("condition", "service_started")
        if cond == "service_healthy" and "healthcheck" not in services[dep]:
            fail(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")

for backing in ("kafka", "registry", "redis", "postgres"):
    if "healthcheck" not in services.get(backing, {}):
        fail(f"{backing} has no healthcheck")
init_deps = services["init"].get("depends_on") or {}
for backing in ("kafka", "registry", "redis", "postgres"):
    if (init_deps.get(backing) or {}).get("condition") != "service_healthy":
        fail(f"init does not wait for {backing} to be healthy (it would race it)")
init_cmd = " ".join(services["init"].get("entrypoint") or []) + " " + " ".join(command("init"))
for step in ("topics apply", "schemas register", "db migrate"):
    if step not in init_cmd:
        fail(f"init does not run `{step}`")

tools = {n: command(n) for n, s in services.items() if s.get("image", "").startswith("scheduled-jobs") and n != "init"}
processors = sorted(n for n, c in tools.items() if c[:1] == ["run"])
ticks = sorted(n for n, c in tools.items() if c[:1] == ["tick"])
if len(processors) != 2 or len(ticks) != 2:
    fail(f"expected two processors and two tick producers, found {processors} and {ticks}")
ids = [env(n).get("SJ_PROCESSOR__INSTANCE_ID") for n in processors]
if None in ids or len(set(ids)) != len(ids):
    fail(f"processors need distinct stable instance ids, found {ids}")
host_ports = []
for n in processors + ticks:
    deps = services[n].get("depends_on") or {}
    if (deps.get("init") or {}).get("condition") != "service_completed_successfully":
        fail(f"{n} does not wait for init to complete successfully")
    listen = env(n).get("SJ_METRICS__LISTEN", "")
    port = listen.rsplit(":", 1)[-1]
    published = [str(p) for p in services[n].get("ports") or []]
    if not listen or not any(p.endswith(":" + port) for p in published):
        fail(f"{n}: metrics port {port or '(metrics.listen unset)'} is not published ({published})")
    host_ports += [p.split(":")[0] for p in published]
    if "healthcheck" not in services[n]:
        fail(f"{n} has no healthcheck")
all_host_ports = [str(p).split(":")[0] for s in services.values() for p in s.get("ports") or []]
dups = {p for p in all_host_ports if all_host_ports.count(p) > 1}
if dups:
    fail(f"host ports published twice: {sorted(dups)}")

reg = env("registry")
if reg.get("APICURIO_STORAGE_KIND") != "sql" or "jdbc:postgresql://postgres" not in reg.get("APICURIO_DATASOURCE_URL", ""):
    fail(f"the registry does not keep its schemas in PostgreSQL: {reg}")
if "--appendonly" not in command("redis") or command("redis")[command("redis").index("--appendonly") + 1] != "yes":
    fail(f"redis runs without an AOF: {command('redis')}")
for vol_user in ("kafka", "redis", "postgres"):
    if not services[vol_user].get("volumes"):
        fail(f"{vol_user} keeps its data in the container (no volume)")
for mount in services["postgres"].get("volumes") or []:
    src = str(mount).split(":")[0]
    if src.startswith("./") and not os.path.exists(src):
        fail(f"postgres mounts {src}, which does not exist")

# Kafka: a SASL_PLAINTEXT listener with SCRAM, the tool's mechanism enabled with its JAAS
# entry on every SCRAM listener, and a user made for it.
k = env("kafka")
protocols = dict(x.split(":") for x in k["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
scram = [l for l, p in protocols.items() if p in ("SASL_PLAINTEXT", "SASL_SSL")]
enabled = k.get("KAFKA_SASL_ENABLED_MECHANISMS", "").split(",")
if not scram:
    fail("kafka has no SASL listener")
tool_env = env(processors[0]) if processors else {}
mechanism = tool_env.get("SJ_KAFKA_PROP_SASL_MECHANISM", "")
if mechanism not in enabled:
    fail(f"the tool uses {mechanism or 'no SASL mechanism'}, kafka enables {enabled}")
for listener in scram:
    for mech in enabled:
        var = f"KAFKA_LISTENER_NAME_{listener}_{mech.replace('-', '___')}_SASL_JAAS_CONFIG"
        if "ScramLoginModule" not in k.get(var, ""):
            fail(f"kafka lacks {var} (listener {listener}, {mech})")
    if "_" in listener:
        fail(f"listener name {listener}: the image turns `_` in variable names into dots")
bootstrap = tool_env.get("SJ_KAFKA__BOOTSTRAP_SERVERS", "")
advertised = dict(re.match(r"([A-Z0-9]+)://(.*)", x).groups() for x in k["KAFKA_ADVERTISED_LISTENERS"].split(","))
if not any(advertised.get(l) == bootstrap for l in scram):
    fail(f"the tool's bootstrap {bootstrap} is not a SCRAM listener of kafka ({advertised})")
users = " ".join(command("kafka-users"))
if f"--entity-name {tool_env.get('SJ_KAFKA_PROP_SASL_USERNAME')}" not in users or mechanism not in users:
    fail(f"kafka-users does not create {tool_env.get('SJ_KAFKA_PROP_SASL_USERNAME')} for {mechanism}")

# The tool's environment is valid configuration, for every container of the tool.
for n in ["init"] + processors + ticks:
    e = env(n)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SJ_")}
    r = subprocess.run([binary, "config", "check"], env={**clean, **e}, capture_output=True, text=True, cwd=os.getcwd())
    if r.returncode != 0:
        fail(f"{n}: `scheduled-jobs config check` refuses its environment: {r.stderr.strip() or r.stdout.strip()}")

if problems:
    print(f"{len(problems)} problem(s) in {path}")
    sys.exit(1)
print(f"ok: {path}: {len(services)} services wired; processors {processors}, tick producers {ticks}")
PY
