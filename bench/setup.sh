#!/usr/bin/env bash
# Creates bench/.venv-peers with the peer runtimes (DBOS, LangGraph). They live in their own
# virtualenv so they are never dependencies of peo and cannot shift peo's own dependency set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-peers"
py="${PYTHON:-python3}"
# Pinned so that figures from different sessions compare like with like.
DBOS_VERSION="${DBOS_VERSION:-3.4.0}"
LANGGRAPH_VERSION="${LANGGRAPH_VERSION:-1.2.24}"
LG_SQLITE_VERSION="${LG_SQLITE_VERSION:-3.1.2}"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
# This machine's pip configuration names local mirror folders that may not exist; pip warns
# about each one per package, which drowns anything useful.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
quiet "$venv/bin/python" -m pip install --quiet \
    "dbos==$DBOS_VERSION" \
    "langgraph==$LANGGRAPH_VERSION" \
    "langgraph-checkpoint-sqlite==$LG_SQLITE_VERSION" \
    "langchain-openai==${LANGCHAIN_OPENAI_VERSION:-1.8.1}" \
    psutil
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
for name in ("dbos", "langgraph", "langgraph-checkpoint-sqlite", "langgraph-checkpoint", "langchain-openai"):
    print(f"{name}=={version(name)}")
PY
