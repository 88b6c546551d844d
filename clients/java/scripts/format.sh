#!/usr/bin/env bash
# Formats the hand-written Java (not the generated dev/dualstream/v1) with google-java-format;
# `--check` only lists the files that differ and fails if there are any (make test-java).
# The formatter's jar is fetched with Maven once, into the project's cache directory: Maven's
# own repository is under Java's user.home, which need not be $HOME, so its path is not ours
# to guess.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.28.0 # the newest that runs on Java 17
tools=${DUALSTREAM_CACHE:-$HOME/.cache/dualstream}/java-tools
jar=$tools/google-java-format-$version-all-deps.jar
if [[ ! -f $jar ]]; then
  echo "fetching google-java-format $version" >&2
  mvn -B -q -ntp org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="com.google.googlejavaformat:google-java-format:$version:jar:all-deps" \
    -DoutputDirectory="$tools"
fi
exports=()
for package in api code file parser tree util; do
  exports+=("--add-exports=jdk.compiler/com.sun.tools.javac.$package=ALL-UNNAMED")
done
mapfile -t sources < <(find src examples -name '*.java' -not -path '*/dev/dualstream/v1/*' | sort)
if [[ ${1:-} == --check ]]; then
  differing=$(java "${exports[@]}" -jar "$jar" --dry-run "${sources[@]}")
  if [[ -n $differing ]]; then
    echo "$differing"
    echo "these files are not google-java-format'ed: run clients/java/scripts/format.sh" >&2
    exit 1
  fi
else
  java "${exports[@]}" -jar "$jar" --replace "${sources[@]}"
fi
