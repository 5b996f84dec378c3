#!/usr/bin/env bash
# A user clones the repository alone: no tracked build file, test, script or
# source may reach outside the checkout (the shared folder beside it, or an
# absolute path under the directory that holds the clone). Markdown may
# mention that folder as prose. .ci/run also runs the suite with it hidden,
# which catches what a pattern cannot.
set -euo pipefail
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$top"
parent=$(dirname "$top")
bad=$(git ls-files -z -- ':!*.md' ':!tests/repo/self_contained.sh' |
  xargs -0 grep -nE '\.\./shared|PROJECT_SOURCE_DIR\}/\.\.|CMAKE_SOURCE_DIR\}/\.\.|'"$parent"'/shared' \
  2>/dev/null || true)
if [ -n "$bad" ]; then
  echo "self_contained: these lines read outside the checkout (a clone has nothing beside it):" >&2
  echo "$bad" >&2
  exit 1
fi
echo "self_contained: no tracked file outside *.md reaches outside the checkout"
