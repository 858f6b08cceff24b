"""Checks the rendered deploy/kubernetes base: run by tests/deploy/kubernetes.sh with the
python of kubernetes-validate's virtualenv (kubernetes_validate, jsonschema, yaml).

1. Schemas. Every object against the Kubernetes API's schemas (kubernetes-validate, strict:
   unknown fields rejected) for each --kube-version; the PodMonitor against the
   openAPIV3Schema of prometheus-operator's CRD (--crd), made strict the way the API server's
   strict field validation is (no unknown fields where the schema lists properties), its
   metadata against ObjectMeta. A kind without a schema is an error, not a warning.
2. Structure: what the deployment must get right and no schema says (README "Deploying",
   "Running in production"): processor instance ids from the pod name, credentials only
   through secretKeyRef, probes, the setup Job's three steps in order, selectors, security
   contexts, resources.
3. Settings: every container's environment, resolved as the kubelet would (ConfigMaps, then
   env; Secrets replaced by dummy values, fieldRefs by a pod name), is given to
   `scheduled-jobs config check` and `config show`, without network where the machine
   allows it (`unshare --net`; see no_network()).

Prints one line per problem, naming the object, container and field; exits 1 if any.
"""

import argparse
import functools
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


# kubernetes-validate re-reads its 2 MB definitions file for every object; read it once.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)

# Names of credentials, as the tool itself decides what to redact (src/config.rs,
# is_secret_property), on environment names: SJ_KAFKA_PROP_SSL_KEY_PEM is `ssl.key.pem`.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|JAAS|TOKEN|KEY_PEM|CREDENTIALS", re.IGNORECASE)
# A password inside a URL: scheme://user:password@host
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
# SJ_* variables the binary reads without `__`: clap's --config and --log-format. Every other
# flat SJ_ name is ignored (scripts/services.sh's), so a misspelt setting would pass unseen.
FLAT_SJ_NAMES = {"SJ_CONFIG", "SJ_LOG_FORMAT"}

KAFKA_PASSWORD = "SJ_KAFKA_PROP_SASL_PASSWORD"
# The credentials each command needs (README "Running in production"): the Kafka SASL
# password whenever SASL is configured (every command builds a Kafka client at start).
CREDENTIALS = {
    ("run",): ["SJ_REGISTRY__PASSWORD", "SJ_REDIS__PASSWORD", "SJ_POSTGRES__PASSWORD"],
    ("tick",): ["SJ_REGISTRY__PASSWORD"],
    ("topics", "apply"): [],
    ("schemas", "register"): ["SJ_REGISTRY__PASSWORD"],
    ("db", "migrate"): ["SJ_POSTGRES__PASSWORD"],
}
SETUP_STEPS = [("topics", "apply"), ("schemas", "register"), ("db", "migrate")]
# docs/performance.md: the processor's peak RSS in the benchmarks (every Redis key missing,
# 1,000,000 products: 95.6-105.5 MB), rounded up; librdkafka's consumer pre-fetch queue
# (queued.max.messages.kbytes, 64 MiB) can come on top of it under a backlog.
PROCESSOR_PEAK_BYTES = 110_000_000
PREFETCH_BYTES = 64 * 1024 * 1024


def quantity(value) -> float:
    """A Kubernetes resource quantity as a number (bytes, cores)."""
    s = str(value)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix, factor in suffixes.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def selects(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions) selects these labels. An empty
    one selects nothing here: no workload of this base means to select everything."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# ---- 1. schemas ----------------------------------------------------------------------------


def validate_kubernetes(doc: dict, where: str, versions: list[str]) -> None:
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kv_utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            problem(where, f"invalid for Kubernetes {e.version} (strict schema): {path}: {e.message}")
            return
        except kv_utils.SchemaNotFoundError as e:
            problem(where, f"{e.message} (a misspelt kind or apiVersion?)")
            return
        except kv_utils.VersionNotSupportedError as e:
            problem(where, e.message)
            return


def strict_openapi(schema):
    """A CRD's structural schema with unknown fields rejected where it lists properties (as
    the API server's strict field validation does; it prunes them otherwise)."""
    if isinstance(schema, dict):
        out = {k: (strict_openapi(v) if k != "properties" else {p: strict_openapi(s) for p, s in v.items()}) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_openapi(s) for s in schema]
    return schema


def load_crds(paths: list[str]) -> dict:
    """(apiVersion, kind) -> a validator of that version's schema."""
    crds = {}
    for path in paths:
        with open(path) as f:
            crd = yaml.safe_load(f)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if not v.get("served"):
                continue
            schema = strict_openapi(v["schema"]["openAPIV3Schema"])
            # OpenAPI 3.0 schemas are draft-4 style (boolean exclusiveMinimum).
            crds[(f"{group}/{v['name']}", kind)] = jsonschema.Draft4Validator(schema)
    return crds


def validate_custom(doc: dict, where: str, crds: dict, versions: list[str]) -> None:
    validator = crds.get((doc.get("apiVersion"), doc.get("kind")))
    if validator is None:
        have = ", ".join(f"{k} {a}" for a, k in sorted(crds)) or "none"
        problem(where, f"no schema for {doc.get('kind')} {doc.get('apiVersion')} (CRD schemas given: {have})")
        return
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
        path = ".".join(str(p) for p in e.path) or "(top)"
        problem(where, f"invalid against its CRD's schema: {path}: {e.message}")
    # The CRD's schema leaves metadata open: the API server checks it as ObjectMeta.
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata") or {}}
    validate_kubernetes(meta, f"{where} metadata", versions[-1:])


# ---- 2. structure --------------------------------------------------------------------------

WORKLOADS = ("StatefulSet", "Deployment", "Job", "DaemonSet", "CronJob")


def pod_spec(doc: dict) -> dict:
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def pod_labels(doc: dict) -> dict:
    spec = doc.get("spec") or {}
    return (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}


def containers(doc: dict) -> list[tuple[str, dict]]:
    spec = pod_spec(doc)
    return [("initContainer", c) for c in spec.get("initContainers") or []] + [("container", c) for c in spec.get("containers") or []]


def command_of(c: dict, entrypoint: str) -> list[list[str]]:
    """The scheduled-jobs invocations a container makes: its args after the image's entrypoint,
    or its command; `sh -c 'a && b'` is read as a sequence."""
    command, args = c.get("command") or [], c.get("args") or []
    argv = (command + args) if command else [entrypoint] + args
    if len(argv) >= 3 and os.path.basename(argv[0]) in ("sh", "bash", "dash") and argv[1] == "-c":
        steps = [shlex.split(part) for part in argv[2].split("&&")]
    else:
        steps = [argv]
    return [s[1:] if s and os.path.basename(s[0]) == entrypoint else ["<not scheduled-jobs>"] + s for s in steps]


def subcommand(step: list[str]) -> tuple:
    for n in (2, 1):
        if tuple(step[:n]) in CREDENTIALS:
            return tuple(step[:n])
    return tuple(step[:2])


def env_entries(c: dict) -> dict:
    return {e["name"]: e for e in c.get("env") or []}


def check_container_security(where: str, pod: dict, c: dict) -> None:
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
        problem(where, "securityContext.runAsNonRoot must be true (the image runs as non-root)")
    if csc.get("runAsUser", psc.get("runAsUser")) == 0:
        problem(where, "securityContext.runAsUser must not be 0")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem(where, "securityContext.allowPrivilegeEscalation must be false")
    if csc.get("readOnlyRootFilesystem") is not True:
        problem(where, "securityContext.readOnlyRootFilesystem must be true")
    if csc.get("privileged"):
        problem(where, "securityContext.privileged must not be true")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problem(where, "securityContext.capabilities.drop must contain ALL")


def check_resources(where: str, c: dict) -> None:
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(part) or {}):
                problem(where, f"resources.{part}.{r} is missing (sized from docs/performance.md)")
            else:
                try:
                    quantity(res[part][r])
                except ValueError:
                    problem(where, f"resources.{part}.{r} `{res[part][r]}` is not a quantity")


def check_probes(where: str, c: dict, listen_port: int | None) -> None:
    ports = {p.get("name"): p for p in c.get("ports") or []}
    if "metrics" not in ports:
        problem(where, "no container port named `metrics`")
    elif listen_port is not None and ports["metrics"].get("containerPort") != listen_port:
        problem(where, f"port `metrics` is {ports['metrics'].get('containerPort')}, but metrics.listen (SJ_METRICS__LISTEN) serves {listen_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            problem(where, f"{probe} must be an httpGet of {path}")
            continue
        if get.get("path") != path:
            problem(where, f"{probe}.httpGet.path is `{get.get('path')}`, must be {path}")
        if get.get("port") != "metrics":
            problem(where, f"{probe}.httpGet.port is `{get.get('port')}`, must be the named port `metrics`")
        if get.get("scheme", "HTTP") != "HTTP":
            problem(where, f"{probe}.httpGet.scheme must be HTTP (the endpoint is plain HTTP)")


# ---- 3. settings ---------------------------------------------------------------------------


def resolve_env(where: str, c: dict, configmaps: dict, pod_name: str) -> tuple[dict, dict]:
    """The container's environment as the kubelet builds it: envFrom in order (later sources
    win), then env. Secrets become dummy values. Returns (env, how each name is set)."""
    env, source = {}, {}
    for ef in c.get("envFrom") or []:
        prefix = ef.get("prefix", "")
        if "configMapRef" in ef:
            name = ef["configMapRef"]["name"]
            if name not in configmaps:
                if not ef["configMapRef"].get("optional"):
                    problem(where, f"envFrom configMapRef `{name}` is not in the build (kustomize renames generated ConfigMaps only when the name matches a generator)")
                continue
            for k, v in (configmaps[name].get("data") or {}).items():
                env[prefix + k], source[prefix + k] = str(v), f"ConfigMap {name}"
        elif "secretRef" in ef:
            problem(where, f"envFrom secretRef `{ef['secretRef'].get('name')}`: pass each credential by secretKeyRef, so the check sees which")
    for e in c.get("env") or []:
        n = e["name"]
        if "value" in e:
            env[n], source[n] = str(e["value"]), "value"
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                env[n], source[n] = f"dummy-{vf['secretKeyRef'].get('key')}", "secretKeyRef"
            elif "fieldRef" in vf:
                path = vf["fieldRef"].get("fieldPath")
                env[n], source[n] = (pod_name if path == "metadata.name" else f"dummy-{path}"), f"fieldRef {path}"
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                value = ((configmaps.get(ref.get("name")) or {}).get("data") or {}).get(ref.get("key"))
                if value is None:
                    problem(where, f"env {n}: configMapKeyRef {ref.get('name')}/{ref.get('key')} is not in the build")
                    continue
                env[n], source[n] = str(value), f"ConfigMap {ref.get('name')}"
            else:
                env[n], source[n] = "dummy", "valueFrom"
        else:
            env[n], source[n] = "", "value"
    return env, source


def error_text(result: subprocess.CompletedProcess) -> str:
    """The binary's error line; under SJ_LOG_FORMAT=json a JSON object whose message is wanted."""
    text = (result.stderr or result.stdout).strip()
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)["fields"]["message"]
        except (ValueError, KeyError, TypeError):
            continue
    return text


@functools.lru_cache(maxsize=None)
def no_network() -> list[str]:
    """A prefix that runs a command without network, where the machine allows it. `config
    check` validates the Kafka properties by creating (and at once destroying) a librdkafka
    client, whose broker threads sometimes start resolving the bootstrap servers, and even
    connecting, before it is gone: without network that attempt fails at once, whatever the
    placeholder host names resolve to here."""
    for prefix in (["unshare", "--net"], ["unshare", "--net", "--map-root-user"]):
        try:
            if subprocess.run(prefix + ["true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return []


def run_config(sj_bin: str, app_dir: str, env: dict, action: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": app_dir}
    clean.update(env)
    return subprocess.run(no_network() + [sj_bin, "config", action], cwd=app_dir, env=clean, capture_output=True, text=True, timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="kustomize build output")
    ap.add_argument("--base", required=True, help="the kustomize base (deploy/kubernetes)")
    ap.add_argument("--crd", action="append", default=[], help="a CRD whose schema validates its kind")
    ap.add_argument("--kube-version", action="append", required=True)
    ap.add_argument("--sj-bin", required=True)
    ap.add_argument("--root", required=True, help="the repository (the image's /app holds its topics/ and avro/)")
    a = ap.parse_args()
    a.sj_bin = os.path.abspath(a.sj_bin)

    with open(a.build) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(os.path.join(a.base, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    example_path = os.path.join(a.base, "secret.example.yaml")
    with open(example_path) as f:
        example = [d for d in yaml.safe_load_all(f) if d]
    with open(os.path.join(a.base, "README.md")) as f:
        readme = f.read()

    # 1. schemas
    crds = load_crds(a.crd)
    for doc in docs:
        where = name_of(doc)
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            problem(where, "not a Kubernetes object (apiVersion and kind)")
            continue
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        if "." in group and not group.endswith(".k8s.io"):
            validate_custom(doc, where, crds, a.kube_version)
        else:
            validate_kubernetes(doc, where, a.kube_version)
    for doc in example:
        validate_kubernetes(doc, f"secret.example.yaml {name_of(doc)}", a.kube_version)

    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}

    # No credential in the base itself.
    for doc in by_kind.get("Secret", []):
        problem(name_of(doc), "a Secret in the kustomization: credentials are the platform's to create (secret.example.yaml stays out of it)")
    for name, cm in configmaps.items():
        for k, v in (cm.get("data") or {}).items():
            if SECRET_NAME.search(k):
                problem(f"ConfigMap/{name}", f"{k} looks like a credential: reference the Secret with secretKeyRef instead")
            if URL_PASSWORD.search(str(v)):
                problem(f"ConfigMap/{name}", f"{k} holds a URL with a password")

    # Expected image: kustomization `images:` for `scheduled-jobs`.
    image_entry = next((i for i in kustomization.get("images") or [] if i.get("name") == "scheduled-jobs"), None)
    expected_image = None
    if not image_entry:
        problem("kustomization.yaml", "no `images:` entry for scheduled-jobs (the tag is set there)")
    elif image_entry.get("digest"):
        expected_image = f"{image_entry.get('newName', 'scheduled-jobs')}@{image_entry['digest']}"
    elif not image_entry.get("newTag") or image_entry.get("newTag") == "latest":
        problem("kustomization.yaml", "images: scheduled-jobs needs a newTag (not latest) or a digest")
    else:
        expected_image = f"{image_entry.get('newName', 'scheduled-jobs')}:{image_entry['newTag']}"

    secret_refs: set[tuple[str, str]] = set()
    app_tmp = tempfile.TemporaryDirectory(prefix="sj-app-")
    app_dir = app_tmp.name
    for d in ("topics", "avro"):
        os.symlink(os.path.join(a.root, d), os.path.join(app_dir, d))
    roles: dict[str, list[tuple[dict, dict, dict]]] = {"run": [], "tick": [], "setup": []}
    setup_jobs = []

    for doc in docs:
        kind = doc.get("kind")
        if kind not in WORKLOADS:
            continue
        wname = name_of(doc)
        pod = pod_spec(doc)
        spec = doc.get("spec") or {}
        if kind in ("StatefulSet", "Deployment", "DaemonSet") and not selects(spec.get("selector") or {}, pod_labels(doc)):
            problem(wname, "spec.selector does not select the pod template's labels")
        pod_name = {
            "StatefulSet": f"{doc['metadata']['name']}-0",
            "Deployment": f"{doc['metadata']['name']}-5d9c7b8f4-x7k2p",
        }.get(kind, f"{doc['metadata']['name']}-x7k2p")
        steps_of_pod = []
        for ctype, c in containers(doc):
            where = f"{wname} {ctype} {c.get('name')}"
            if expected_image and c.get("image") != expected_image:
                problem(where, f"image is `{c.get('image')}`, expected `{expected_image}` (kustomization images:)")
            check_container_security(where, pod, c)
            check_resources(where, c)
            env, source = resolve_env(where, c, configmaps, pod_name)
            entries = env_entries(c)
            for n, e in entries.items():
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret_refs.add((ref.get("name"), ref.get("key")))
            # Credentials: only ever from a Secret, never a literal.
            for n, how in source.items():
                if SECRET_NAME.search(n) and how != "secretKeyRef":
                    problem(where, f"{n} is a credential but comes from {how}: it must be a secretKeyRef")
                if how == "value" and URL_PASSWORD.search(env[n]):
                    problem(where, f"{n} holds a URL with a password")
            # Every SJ_ name must be one the binary reads.
            for n in env:
                if n.startswith("SJ_") and not (n.startswith("SJ_KAFKA_PROP_") or "__" in n or n in FLAT_SJ_NAMES):
                    problem(where, f"{n} is not a setting the binary reads (SJ_<SECTION>__<KEY>, SJ_KAFKA_PROP_<NAME>, {', '.join(sorted(FLAT_SJ_NAMES))}): misspelt?")
            steps = command_of(c, "scheduled-jobs")
            steps_of_pod += steps
            role = "run" if steps[0][:1] == ["run"] else "tick" if steps[0][:1] == ["tick"] else "setup"
            settings = None
            sasl = "SASL" in env.get("SJ_KAFKA_PROP_SECURITY_PROTOCOL", "").upper()
            for step in steps:
                sub = subcommand(step)
                needed = CREDENTIALS.get(sub)
                if needed is None:
                    problem(where, f"runs `{' '.join(step)}`, not a command this deployment expects (run, tick, topics apply, schemas register, db migrate)")
                    continue
                for n in needed + ([KAFKA_PASSWORD] if sasl else []):
                    if n not in entries or not (entries[n].get("valueFrom") or {}).get("secretKeyRef"):
                        problem(where, f"`{' '.join(step)}` needs {n} from the Secret (secretKeyRef)")
            # The settings as the binary sees them.
            check = run_config(a.sj_bin, app_dir, env, "check")
            if check.returncode != 0:
                problem(where, f"`scheduled-jobs config check` refuses its environment (exit {check.returncode}): {error_text(check)}")
            else:
                shown = run_config(a.sj_bin, app_dir, env, "show")
                try:
                    settings = tomllib.loads(shown.stdout)
                except tomllib.TOMLDecodeError as e:
                    problem(where, f"`config show` did not print TOML: {e}")
            roles[role].append((doc, c, settings))
            if settings is None:
                if role in ("run", "tick"):
                    check_probes(where, c, None)
                continue
            for setting in (("topics", "dir"), ("schemas", "dir")):
                rel = settings[setting[0]][setting[1]]
                if os.path.isabs(rel) or not os.path.isdir(os.path.join(app_dir, rel)):
                    problem(where, f"{'.'.join(setting)} `{rel}` is not a folder of the image's /app (topics/, avro/)")
            if role in ("run", "tick"):
                listen = settings["metrics"]["listen"]
                port = None
                try:
                    host, port_text = listen.rsplit(":", 1)
                    port = int(port_text)
                    if not ipaddress.ip_address(host.strip("[]")).is_unspecified:
                        problem(where, f"metrics.listen `{listen}` must listen on all addresses (0.0.0.0): the kubelet probes the pod's IP")
                except ValueError:
                    problem(where, f"metrics.listen is `{listen}`: the probes and the PodMonitor need it (e.g. 0.0.0.0:9464)")
                check_probes(where, c, port)
        if kind == "Job":
            setup_jobs.append((doc, steps_of_pod))

    # Processors: a StatefulSet, the pod name as instance id, a PDB.
    processors = [(d, c, s) for d, c, s in roles["run"]]
    if not processors:
        problem("processors", "no workload runs `scheduled-jobs run`")
    for doc, c, settings in processors:
        where = f"{name_of(doc)} container {c.get('name')}"
        if doc["kind"] != "StatefulSet":
            problem(where, "the processor must be a StatefulSet: its instance id (fencing, static membership) is the stable pod name")
            continue
        if (doc["spec"].get("replicas") or 1) != 2:
            problem(name_of(doc), f"replicas is {doc['spec'].get('replicas')}, expected 2")
        ref = (env_entries(c).get("SJ_PROCESSOR__INSTANCE_ID") or {}).get("valueFrom", {}).get("fieldRef", {})
        if ref.get("fieldPath") != "metadata.name":
            problem(where, "SJ_PROCESSOR__INSTANCE_ID must come from fieldRef metadata.name (the pod name)")
        elif settings and settings["processor"]["instance_id"] != f"{doc['metadata']['name']}-0":
            problem(where, f"processor.instance_id resolves to `{settings['processor']['instance_id']}`, not the pod name")
        grace = pod_spec(doc).get("terminationGracePeriodSeconds", 30)
        timeout = settings["processor"]["transaction_timeout_ms"] / 1000 if settings else 30
        if grace < 60 or grace <= timeout:
            problem(name_of(doc), f"terminationGracePeriodSeconds {grace}: SIGTERM finishes the record in hand (its transaction up to {timeout:.0f} s); give at least 60")
        res = c.get("resources") or {}
        try:
            req = quantity((res.get("requests") or {}).get("memory", 0))
            lim = quantity((res.get("limits") or {}).get("memory", 0))
            if req < PROCESSOR_PEAK_BYTES:
                problem(where, f"memory request {res['requests'].get('memory')} is below the processor's measured peak RSS (110 MB, docs/performance.md)")
            if lim < PROCESSOR_PEAK_BYTES + PREFETCH_BYTES:
                problem(where, f"memory limit {res['limits'].get('memory')} leaves no room above the measured peak (110 MB) for librdkafka's 64 MiB pre-fetch queue")
        except (ValueError, KeyError):
            pass
        labels = pod_labels(doc)
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if selects((p.get("spec") or {}).get("selector"), labels)]
        if not pdbs:
            problem(name_of(doc), "no PodDisruptionBudget selects the processor pods")
        for p in pdbs:
            if str((p.get("spec") or {}).get("maxUnavailable")) != "1":
                problem(name_of(p), f"maxUnavailable is {(p.get('spec') or {}).get('maxUnavailable')}, expected 1")

    # Tick producers: two, spread over nodes.
    ticks = roles["tick"]
    if not ticks:
        problem("tick producers", "no workload runs `scheduled-jobs tick`")
    for doc, c, _ in ticks:
        if doc["kind"] != "Deployment":
            problem(name_of(doc), "the tick producers should be a Deployment")
            continue
        if (doc["spec"].get("replicas") or 1) != 2:
            problem(name_of(doc), f"replicas is {doc['spec'].get('replicas')}, expected 2 (two producers, on different hosts)")
        anti = (pod_spec(doc).get("affinity") or {}).get("podAntiAffinity") or {}
        terms = [t.get("podAffinityTerm") or {} for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
        terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
        if not any(t.get("topologyKey") == "kubernetes.io/hostname" and selects(t.get("labelSelector"), pod_labels(doc)) for t in terms):
            problem(name_of(doc), "no pod anti-affinity by kubernetes.io/hostname selecting the tick producer pods")

    # The setup Job: topics apply, schemas register, db migrate, in that order.
    if not setup_jobs:
        problem("setup", "no Job runs topics apply, schemas register and db migrate")
    for doc, steps in setup_jobs:
        got = [tuple(s[:2]) for s in steps]
        if got != SETUP_STEPS:
            problem(name_of(doc), f"runs {[' '.join(s) for s in got]}, expected {[' '.join(s) for s in SETUP_STEPS]} in this order")
        pod = pod_spec(doc)
        if len(pod.get("containers") or []) != 1:
            problem(name_of(doc), "the steps must run one after another: init containers, then one container (regular containers run side by side)")
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            problem(name_of(doc), "restartPolicy must be Never or OnFailure")
        labels = pod_labels(doc)
        for svc in by_kind.get("Service", []):
            if (svc.get("spec") or {}).get("selector") and selects({"matchLabels": svc["spec"]["selector"]}, labels):
                problem(name_of(svc), "selects the setup Job's pods, which serve no metrics")

    # Metrics: a Service over both roles' port `metrics`, and a PodMonitor scraping /metrics.
    role_pods = [(label, pod_labels(d)) for r, label in (("run", "processor"), ("tick", "tick producer")) for d, _, _ in roles[r]]
    metrics_services = [s for s in by_kind.get("Service", []) if role_pods and all(selects({"matchLabels": (s.get("spec") or {}).get("selector") or {}}, l) for _, l in role_pods)]
    if not metrics_services:
        problem("metrics", "no Service selects the pods of both roles (processor and tick producer)")
    for s in metrics_services:
        if not any(p.get("targetPort") == "metrics" for p in (s.get("spec") or {}).get("ports") or []):
            problem(name_of(s), "no port with targetPort `metrics`")
    monitors = by_kind.get("PodMonitor", [])
    if not monitors:
        problem("metrics", "no PodMonitor")
    for m in monitors:
        spec = m.get("spec") or {}
        for role, labels in role_pods:
            if not selects(spec.get("selector") or {}, labels):
                problem(name_of(m), f"spec.selector does not select the `{role}` pods")
        endpoints = spec.get("podMetricsEndpoints") or []
        if not any(e.get("port") == "metrics" and e.get("path", "/metrics") == "/metrics" for e in endpoints):
            problem(name_of(m), "no podMetricsEndpoints entry with port `metrics` and path /metrics")
        for i, e in enumerate(endpoints):
            if e.get("honorLabels") is not True:
                problem(name_of(m), f"podMetricsEndpoints[{i}].honorLabels must be true: the metrics carry their own `job` label, which the alerting rules select on (else renamed exported_job)")

    # README.md's upgrade procedure applies `-l app.kubernetes.io/component=config` (every
    # ConfigMap), then `=setup` (the Job), before everything else.
    def component(d):
        return ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component")
    for d in docs:
        if (d.get("kind") == "ConfigMap") != (component(d) == "config"):
            problem(name_of(d), "app.kubernetes.io/component=config must label exactly the ConfigMaps (README.md, Applying)")
        if d.get("kind") == "Job" and component(d) != "setup":
            problem(name_of(d), "the setup Job needs the label app.kubernetes.io/component=setup (README.md, Applying)")

    # The Secrets the base references are documented: in secret.example.yaml and README.md.
    example_keys = {(d["metadata"]["name"], k) for d in example if d.get("kind") == "Secret" for k in {**(d.get("stringData") or {}), **(d.get("data") or {})}}
    for name, key in sorted(secret_refs):
        if (name, key) not in example_keys:
            problem("secret.example.yaml", f"lacks Secret {name} key {key}, which the base references")
        if name not in readme or key not in readme:
            problem("deploy/kubernetes/README.md", f"does not name Secret {name} key {key}, which the base references")
    for d in example:
        for k, v in (d.get("stringData") or {}).items():
            if v not in ("CHANGE-ME", ""):
                problem("secret.example.yaml", f"{d['metadata']['name']} {k}: example values must be placeholders (CHANGE-ME)")

    for line in problems:
        print(f"kubernetes: {line}", file=sys.stderr)
    if problems:
        print(f"kubernetes: {len(problems)} problem(s) in deploy/kubernetes", file=sys.stderr)
        return 1
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    print(f"kubernetes: ok: {counts}; Kubernetes {', '.join(a.kube_version)} (strict), "
          f"{len(monitors)} PodMonitor against its CRD; config check of {sum(len(v) for v in roles.values())} containers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
