# The AsyncAPI CLI (npm @asyncapi/cli), which tests/deploy/asyncapi.sh runs as
# `asyncapi validate docs/asyncapi.yaml`. Sourced by scripts/tools.sh with $TOOLS_DIR set.
#
# 4.1.1 is the newest release that runs on Node 20 (5.x and later declare node >= 24). Its
# dependencies are semver ranges (about 1,500 packages, 1.5 GB installed), so the tree is
# pinned by date too: --before resolves every range to what was published by
# ASYNCAPI_DEPS_BEFORE, the tree this check was written against (@asyncapi/parser 3.6.6,
# @asyncapi/avro-schema-parser 3.1.0, @asyncapi/specs 6.11.1, avsc 5.7.9). The validation
# itself is @asyncapi/parser (AsyncAPI 3.0.0 JSON schemas, Spectral rules) and the Avro schema
# parser.
#
# --ignore-scripts: the CLI's only install script sets up shell autocompletion (it would edit
# the user's shell rc file); nothing `validate` needs is built at install time. The install is
# staged and renamed into place, so an interrupted one never leaves a half tree that looks
# installed (its leftovers go at the next install, which tools.sh runs under its lock). The
# directory names both pins, so changing either installs afresh.
ASYNCAPI_VERSION=4.1.1
ASYNCAPI_DEPS_BEFORE=2026-11-30

ASYNCAPI_DIR=$TOOLS_DIR/asyncapi-$ASYNCAPI_VERSION-deps-$ASYNCAPI_DEPS_BEFORE

install_tool() {
  local stage
  command -v npm >/dev/null || { echo "asyncapi: npm (Node.js 20+) is needed" >&2; return 1; }
  rm -rf "$TOOLS_DIR"/.asyncapi-stage.*
  stage=$(mktemp -d "$TOOLS_DIR/.asyncapi-stage.XXXXXX")
  # A package.json of its own, so npm installs here rather than into an enclosing project.
  echo '{"name": "asyncapi-tool", "private": true}' >"$stage/package.json"
  if ! npm install --prefix "$stage" --no-audit --no-fund --no-update-notifier --ignore-scripts \
      --omit=dev --loglevel=error --before="$ASYNCAPI_DEPS_BEFORE" "@asyncapi/cli@$ASYNCAPI_VERSION"; then
    rm -rf "$stage"
    return 1
  fi
  rm -rf "$ASYNCAPI_DIR"
  mv "$stage" "$ASYNCAPI_DIR"
}

tool_path() {
  echo "$ASYNCAPI_DIR/node_modules/.bin/asyncapi"
}
