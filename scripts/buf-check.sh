#!/usr/bin/env bash
# `buf lint` (STANDARD) and `buf breaking` (FILE, see buf.yaml) on the API, for `make test`.
#
# Breaking changes are judged against the protos of the previous commit of main: on main (CI's
# fresh clone) that is HEAD~1; on a branch, the commit of main it started from (the merge
# base), so a branch is checked against what main had, however many commits it adds.
# BUF_AGAINST=<git ref> overrides the choice.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools=$("$repo/scripts/proto-tools.sh")
buf=$tools/buf
cd "$repo"

"$buf" lint
echo "buf lint: clean (STANDARD)"

against=${BUF_AGAINST:-}
if [[ -z $against ]]; then
  head=$(git rev-parse HEAD)
  main=$(git rev-parse --verify -q main || true)
  if [[ -n $main && $main != "$head" ]]; then
    against=$(git merge-base HEAD "$main")
  else
    against=$(git rev-parse --verify -q HEAD~1 || true)
  fi
fi
if [[ -z $against ]]; then
  if [[ $(git rev-parse --is-shallow-repository) == true ]]; then
    echo "buf breaking: a shallow clone has no previous commit to compare with;" \
      "clone with history or set BUF_AGAINST" >&2
    exit 1
  fi
  echo "buf breaking: nothing to compare with (the repository's first commit)"
  exit 0
fi

# The old protos go into a scratch directory, with today's buf.yaml when that commit had none,
# so the comparison sees the same module layout on both sides.
previous=$(mktemp -d)
trap 'rm -rf "$previous"' EXIT
git archive "$against" protos | tar -x -C "$previous"
if git cat-file -e "$against:buf.yaml" 2>/dev/null; then
  git show "$against:buf.yaml" >"$previous/buf.yaml"
else
  cp buf.yaml "$previous/buf.yaml"
fi
"$buf" breaking --against "$previous"
echo "buf breaking: no breaking change (FILE) against $(git log -1 --format='%h %s' "$against" | cut -c1-72)"
