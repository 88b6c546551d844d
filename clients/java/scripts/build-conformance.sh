#!/usr/bin/env bash
# Builds the Java conformance app (src/test/java/.../conformance) for tests/clients/ into
# OUTDIR: its classes and the client's, plus `app.args`, a java argument file naming the
# classpath and the main class, so the tests run it with plain `java @OUTDIR/app.args ...`
# (starting Maven for every run would cost seconds on a 2-core machine).
set -euo pipefail
out=${1:?usage: build-conformance.sh OUTDIR}
cd "$(dirname "$0")/.."
mvn -B -q -ntp test-compile
rm -rf "$out"
mkdir -p "$out"
cp -r target/classes "$out/classes"
cp -r target/test-classes "$out/test-classes"
printf -- '-cp "%s:%s:%s"\ndev.dualstream.client.conformance.ConformanceApp\n' \
  "$out/classes" "$out/test-classes" "$(cat target/classpath.txt)" > "$out/app.args"
