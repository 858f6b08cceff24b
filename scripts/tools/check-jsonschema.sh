# check-jsonschema (PyPI), pinned, in its own virtualenv: validates YAML/JSON documents against
# a JSON schema (the compose specification's, the prometheus-operator CRDs' schemas).
VERSION=0.39.0
DIR=$TOOLS_DIR/check-jsonschema-$VERSION

install_tool() {
  rm -rf "$DIR"
  python3 -m venv "$DIR"
  "$DIR/bin/pip" install --quiet --disable-pip-version-check "check-jsonschema==$VERSION"
}

tool_path() {
  echo "$DIR/bin/check-jsonschema"
}
