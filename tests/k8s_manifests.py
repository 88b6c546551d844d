"""Rendering k8s/ with kustomize and validating it offline with kubeconform.

kustomize and kubeconform are built from pinned Go modules into the cache
(``scripts/k8s-tools.sh``). The schemas are those the PyPI package ``kubernetes-validate``
ships, in their strict form (unknown fields are errors); their ``$id`` and ``$ref`` name
``https://kubernetes.io/api/...``, so a local copy is rewritten to refer to its own files and
kubeconform never needs the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from stack.localstack import REPO_ROOT, cache_dir

K8S_DIR = REPO_ROOT / "k8s"
OVERLAYS = ("example", "example-unix-socket", "example-delivery-process")
# The oldest Kubernetes with native sidecars on by default, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
_REMOTE_DEFINITIONS = "/api/_definitions.json#"


@cache
def k8s_tools() -> Path:
    """The directory holding kustomize and kubeconform (built on first use)."""
    built = _output_of(["bash", str(REPO_ROOT / "scripts" / "k8s-tools.sh")], timeout=900)
    return Path(built.strip().splitlines()[-1])


def render(kustomization: Path) -> str:
    return _output_of([str(k8s_tools() / "kustomize"), "build", str(kustomization)])


def _output_of(command: list[str], timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return done.stdout


def documents(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def local_schemas(kubernetes_version: str) -> Path:
    """The directory of strict schemas for ``kubernetes_version``, with local references."""
    name = f"v{kubernetes_version}-local-strict"
    root = cache_dir() / "k8s-schemas" / f"kubernetes-validate-{version('kubernetes-validate')}"
    target = root / name
    if target.is_dir():
        return root
    shipped = files("kubernetes_validate") / "kubernetes-json-schema" / name
    partial = root / f"{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for schema_file in shipped.iterdir():
        schema = json.loads(schema_file.read_text())
        schema.pop("$id", None)
        (partial / schema_file.name).write_text(json.dumps(_local_references(schema)))
    try:
        partial.rename(target)
    except OSError:  # Another run made it first.
        shutil.rmtree(partial, ignore_errors=True)
    return root


def _local_references(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                value.replace(_REMOTE_DEFINITIONS, "_definitions.json#", 1)
                if key == "$ref" and isinstance(value, str)
                else _local_references(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_local_references(item) for item in node]
    return node


def kubeconform(rendered: str, kubernetes_version: str) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict on ``rendered``; a kind without a schema is an error, not a skip."""
    location = (
        f"{local_schemas(kubernetes_version)}/"
        "{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    )
    return subprocess.run(
        [
            str(k8s_tools() / "kubeconform"),
            *("-strict", "-summary", "-kubernetes-version", kubernetes_version),
            *("-schema-location", location, "-"),
        ],
        input=rendered,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def of_kind(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (doc for doc in docs if doc["kind"] == kind)
