#!/usr/bin/env bash
# The Dockerfile builds, checked without a container engine: its build stage is replayed in an
# empty directory — every COPY copies exactly what it names from the build context (the
# repository minus .dockerignore), every cargo RUN runs as written, offline and locked — so a
# file the build needs that the Dockerfile does not copy fails here as it would in `docker
# build`. The runtime stage's COPYs must name files that exist (from the context, or produced
# by the build stage), it must run as a non-root user, and its HEALTHCHECK script must answer
# for a live /healthz and fail without one.
#
# Podman and buildah (Debian) can build only from base images they can pull, and no registry
# of images is reachable here, so none of them runs this Dockerfile; see docs/deploying.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
: "${SJ_BIN:?SJ_BIN: the built scheduled-jobs binary}"

# The replayed builds are kept between runs (cargo's own caching): the first run on a machine
# compiles every dependency once. What is checked is which files the build reads, not the
# machine code, so the release profile's optimisation is turned off through Cargo's
# environment (the commands stay as written): a cold run costs about what a debug build does.
# SJ_DOCKER_CHECK_OPT_LEVEL=3 replays the image's real profile.
export CARGO_TARGET_DIR=${SJ_DOCKER_CHECK_TARGET:-$root/target/docker-context}
export CARGO_PROFILE_RELEASE_OPT_LEVEL=${SJ_DOCKER_CHECK_OPT_LEVEL:-0}
export CARGO_NET_OFFLINE=true
work=$(mktemp -d "${TMPDIR:-/tmp}/sj-docker-context.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 - "$root" "$work" "${SJ_DOCKERFILE:-Dockerfile}" <<'PY'
import fnmatch, os, re, shlex, shutil, subprocess, sys, time

root, work, dockerfile = sys.argv[1], sys.argv[2], sys.argv[3]
target = os.environ["CARGO_TARGET_DIR"]
problems = []

def fail(msg):
    problems.append(msg)
    print("FAIL:", msg)

# Instructions, with continuation lines joined and comments dropped.
lines, cur = [], ""
for raw in open(os.path.join(root, dockerfile)):
    line = raw.rstrip("\n")
    if not cur and line.lstrip().startswith("#"):
        continue
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    cur += line
    if cur.strip():
        lines.append(cur.strip())
    cur = ""

args = {}
stages = []  # (name, [instructions])
for ins in lines:
    word, _, rest = ins.partition(" ")
    word = word.upper()
    if word == "ARG" and not stages:
        k, _, v = rest.partition("=")
        args[k.strip()] = v.strip()
        continue
    if word == "FROM":
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest.strip(), re.I)
        stages.append((m.group(2) or "", []))
        continue
    if not stages:
        fail(f"instruction before FROM: {ins}")
        continue
    stages[-1][1].append((word, rest.strip()))

if len(stages) < 2:
    fail(f"expected a multi-stage build (build + runtime), found {len(stages)} stage(s)")
    sys.exit(1)

ignore = []
di = os.path.join(root, ".dockerignore")
if os.path.exists(di):
    ignore = [l.strip().rstrip("/") for l in open(di) if l.strip() and not l.startswith("#")]
for needed in ("target", ".local"):
    if needed not in ignore:
        fail(f".dockerignore does not keep {needed}/ out of the build context")

def ignored(rel):
    rel = os.path.normpath(rel)
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p + "/") or fnmatch.fnmatch(os.path.basename(rel), p.replace("**/", ""))
               for p in ignore)

def copy_from_context(src, dest):
    path = os.path.join(root, src)
    if not os.path.exists(path):
        fail(f"COPY {src}: not in the build context")
        return
    if ignored(src):
        fail(f"COPY {src}: excluded by .dockerignore")
        return
    if os.path.isdir(path):
        shutil.copytree(path, dest, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if ignored(os.path.relpath(os.path.join(d, n), root))])
    else:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        shutil.copy2(path, dest)

# The build stage, replayed in `work` (its WORKDIR mapped there).
build_name, build = stages[0]
workdir = None
ran_cargo = 0
for word, rest in build:
    if word == "WORKDIR":
        workdir = rest
        os.makedirs(work, exist_ok=True)
    elif word == "COPY":
        parts = shlex.split(rest)
        if any(p.startswith("--") for p in parts):
            fail(f"build stage COPY with flags is not replayed: {rest}")
            continue
        *srcs, dest = parts
        base = work if not dest.startswith("/") else os.path.join(work, os.path.relpath(dest, workdir or "/"))
        for src in srcs:
            d = os.path.join(work, dest) if not dest.startswith("/") else base
            if dest.endswith("/") or len(srcs) > 1 or dest in (".", "./"):
                d = os.path.join(d, os.path.basename(src.rstrip("/")))
            copy_from_context(src, os.path.normpath(d))
    elif word == "RUN":
        if "cargo " not in rest:
            print(f"skipped (system packages of the builder image): RUN {rest[:70]}...")
            continue
        ran_cargo += 1
        print(f"replaying: RUN {rest}")
        t = time.time()
        r = subprocess.run(["bash", "-ec", rest], cwd=work)
        print(f"  took {time.time() - t:.1f} s")
        if r.returncode != 0:
            fail(f"RUN {rest}: exit status {r.returncode} in the replayed build context")
            break
if ran_cargo == 0:
    fail("the build stage runs no cargo command")

binary = os.path.join(target, "release", "scheduled-jobs")
if not problems and not os.access(binary, os.X_OK):
    fail(f"the build stage produced no {binary}")

# The runtime stage.
name, runtime = stages[-1]
user = None
healthcheck = None
entry = None
for word, rest in runtime:
    if word == "COPY":
        parts = shlex.split(rest)
        flags = [p for p in parts if p.startswith("--")]
        srcs = [p for p in parts if not p.startswith("--")][:-1]
        if any(f.startswith("--from=") for f in flags):
            stage = [f for f in flags if f.startswith("--from=")][0].split("=", 1)[1]
            if stage != build_name:
                fail(f"COPY --from={stage}: no such stage")
            for src in srcs:
                if not src.startswith((workdir or "/src").rstrip("/") + "/target/release/"):
                    fail(f"COPY --from={stage} {src}: not an output of the build stage's cargo build")
                elif not problems and not os.path.exists(os.path.join(target, "release", src.split("/target/release/", 1)[1])):
                    fail(f"COPY --from={stage} {src}: the build produced no such file")
        else:
            for src in srcs:
                if not os.path.exists(os.path.join(root, src)):
                    fail(f"runtime COPY {src}: not in the build context")
                elif ignored(src):
                    fail(f"runtime COPY {src}: excluded by .dockerignore")
    elif word == "USER":
        user = rest
    elif word == "HEALTHCHECK":
        healthcheck = rest
    elif word == "ENTRYPOINT":
        entry = rest
if user is None or user.split(":")[0] in ("0", "root"):
    fail(f"the image runs as root (USER: {user})")
if not healthcheck or "scheduled-jobs-healthcheck" not in healthcheck:
    fail(f"no HEALTHCHECK running scheduled-jobs-healthcheck: {healthcheck}")
if not entry or "scheduled-jobs" not in entry:
    fail(f"ENTRYPOINT is not the binary: {entry}")

if problems:
    print(f"{len(problems)} problem(s) with the Dockerfile")
    sys.exit(1)
print(f"ok: the build stage's context is complete ({ran_cargo} cargo steps replayed); runtime stage consistent")
PY

# The image's healthcheck script against a live /healthz (the tick producer's endpoint: it
# serves before reaching Kafka), and against a port nothing listens on.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SJ_METRICS__LISTEN=127.0.0.1:$port SJ_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1 SJ_TOPICS__PREFIX=docker-check- \
  "$CARGO_TARGET_DIR/release/scheduled-jobs" tick >"$work/tick.log" 2>&1 &
pid=$!
ok=""
for _ in $(seq 1 50); do
  if SJ_METRICS__LISTEN=127.0.0.1:$port bash deploy/docker/healthcheck.sh; then ok=1; break; fi
  sleep 0.2
done
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
[[ -n $ok ]] || { echo "FAIL: the healthcheck script got no 200 from /healthz of the built binary"; cat "$work/tick.log"; exit 1; }
if SJ_METRICS__LISTEN=127.0.0.1:$port bash deploy/docker/healthcheck.sh; then
  echo "FAIL: the healthcheck script succeeds with nothing listening"; exit 1
fi
echo "ok: the healthcheck script answers for a live /healthz and fails without one"
