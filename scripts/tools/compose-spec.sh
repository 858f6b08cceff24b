# The Compose Specification's JSON schema, as shipped inside compose-go (the loader Docker
# Compose itself uses), from the Go module proxy, pinned; `check-compose FILE` validates a
# compose file against it with check-jsonschema.
VERSION=v2.16.2
DIR=$TOOLS_DIR/compose-spec-$VERSION

install_tool() {
  local cjs module
  cjs=$("$root/scripts/tools.sh" check-jsonschema)
  module=$(cd "$TOOLS_DIR" && GOFLAGS=-mod=mod go mod download -json "github.com/compose-spec/compose-go/v2@$VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$DIR"
  mkdir -p "$DIR/bin"
  cp "$module/schema/compose-spec.json" "$DIR/compose-spec.json"
  cat >"$DIR/bin/check-compose" <<WRAPPER
#!/usr/bin/env bash
exec "$cjs" --schemafile "$DIR/compose-spec.json" "\$@"
WRAPPER
  chmod +x "$DIR/bin/check-compose"
}

tool_path() {
  echo "$DIR/bin/check-compose"
}
