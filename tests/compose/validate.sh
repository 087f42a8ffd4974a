#!/usr/bin/env bash
# Static checks of compose/ without a Docker engine.
#
#   bash tests/compose/validate.sh
#
# 1. check-jsonschema against the Compose Specification schema it vendors
#    (pip install check-jsonschema; it is in the project's test extras);
# 2. `docker compose config -q` (or `docker-compose config -q`) when a Compose
#    CLI is installed: `config` resolves the files without talking to an engine;
# 3. the pytest module with the semantic checks.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
files=(compose/docker-compose.yml compose/docker-compose.5.yml)

echo "== check-jsonschema (vendor.compose-spec)"
"$PY" -m check_jsonschema --builtin-schema vendor.compose-spec "${files[@]}"

if docker compose version >/dev/null 2>&1; then
    for f in "${files[@]}"; do
        echo "== docker compose -f $f config -q"
        docker compose -f "$f" config -q
    done
elif command -v docker-compose >/dev/null 2>&1; then
    echo "== $(docker-compose version --short): covered by the pytest module"
    echo "   (1.x predates the top-level 'name:'; the test feeds it a copy without it)"
else
    echo "== no Compose CLI installed: schema and pytest checks only"
fi

echo "== pytest tests/compose"
"$PY" -m pytest -q tests/compose
