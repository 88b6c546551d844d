#!/usr/bin/env bash
# The sidecar image without a Docker engine, as CI builds and runs it:
#
#   scripts/image.sh build [TAG]     build TAG (default localhost/dualstream:dev) from the
#                                    project's Dockerfile and print its size
#   scripts/image.sh podman ARGS...  podman on the same image storage (run, inspect, logs, ...)
#
# Debian's mmdebstrap makes a small Debian bookworm base with Python 3.11 and buildah builds
# the Dockerfile on it with `--isolation chroot` (the default isolation cannot run RUN steps
# here); podman runs the result with runc. All state is under
# ${DUALSTREAM_CACHE:-~/.cache/dualstream}/image: the base tarball, the Debian packages it was
# made from, and the image storage, never the machine's shared /var/lib/containers.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_CACHE="${DUALSTREAM_CACHE:-$HOME/.cache/dualstream}/image"
STORAGE=(--root "$IMAGE_CACHE/storage" --runroot "$IMAGE_CACHE/run" --storage-driver overlay)
DEPENDENCIES_TAG=localhost/dualstream-build:dependencies

buildah_() {
  buildah "${STORAGE[@]}" "$@"
}

# The base: Debian's Essential set, python3 (3.11 in bookworm), its venv module, the CA
# certificates and libstdc++ (grpcio needs it); no documentation, man pages, locales or iconv
# modules. Then what the sidecar never runs is purged (perl, bash, PAM and login, util-linux,
# archivers and text tools): the Dockerfile's RUN steps need only sh, coreutils and python3.
# The base's tag is a digest of this recipe, so changing it makes a new base.
base_recipe=(
  --variant=essential
  --include=python3,python3-venv,ca-certificates,libstdc++6
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*'
  # The PAM packages' removal scripts need debconf, so they go first.
  --customize-hook='chroot "$1" dpkg --purge --force-remove-essential --force-depends login libpam-modules libpam-modules-bin libpam-runtime libpam0g util-linux bsdutils'
  --customize-hook='chroot "$1" dpkg --purge --force-remove-essential --force-depends debconf init-system-helpers bash tar diffutils findutils grep gzip sed hostname ncurses-bin sysvinit-utils perl-base openssl'
  bookworm
)

ensure_base() {
  local digest base_tar started container mountpoint
  digest=$(printf '%s\n' "${base_recipe[@]}" | sha256sum | cut -c1-12)
  base_tar="$IMAGE_CACHE/base-bookworm-$digest.tar"
  base_image="localhost/dualstream-base:bookworm-$digest"
  if [ ! -s "$base_tar" ]; then
    echo "making the Debian bookworm base with mmdebstrap (once; cached as $base_tar)"
    started=$SECONDS
    # Packages downloaded once are kept in the cache and handed to apt again next time.
    mmdebstrap --quiet --format=tar --skip=download/empty \
      --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\" && find '$IMAGE_CACHE/debs' -name '*.deb' -exec cp -t \"\$1/var/cache/apt/archives\" {} +" \
      --customize-hook="find \"\$1/var/cache/apt/archives\" -name '*.deb' -exec cp -t '$IMAGE_CACHE/debs' {} +" \
      --customize-hook="find \"\$1/var/cache/apt/archives\" -name '*.deb' -delete" \
      "${base_recipe[@]}" "$base_tar.partial"
    mv "$base_tar.partial" "$base_tar"
    echo "base made in $((SECONDS - started))s ($(du -h "$base_tar" | cut -f1))"
    # Bases of earlier recipes are of no more use.
    find "$IMAGE_CACHE" -maxdepth 1 -name 'base-bookworm-*.tar' ! -name "${base_tar##*/}" -delete
    buildah_ images --noheading --format '{{.Name}}:{{.Tag}}' localhost/dualstream-base \
      | grep -v -x -F "$base_image" | xargs -r buildah "${STORAGE[@]}" rmi >/dev/null || true
  fi
  if ! buildah_ inspect --type image "$base_image" >/dev/null 2>&1; then
    echo "importing the base into the image storage as $base_image"
    container=$(buildah_ from scratch)
    if ! {
      mountpoint=$(buildah_ mount "$container") \
        && tar -xf "$base_tar" -C "$mountpoint" \
        && buildah_ umount "$container" >/dev/null \
        && buildah_ config \
          --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
          --env LANG=C.UTF-8 --cmd '["python3"]' "$container" \
        && buildah_ commit --quiet --rm "$container" "$base_image" >/dev/null
    }; then
      buildah_ rm "$container" >/dev/null 2>&1 || true
      echo "importing the base failed" >&2
      exit 1
    fi
  fi
}

# pip inside the build trusts and uses what this machine's pip does (a TLS-inspecting proxy's
# CA, a mirror): a pip.conf made from the machine's settings, and the CA bundle it names, are
# mounted read-only into the RUN steps only, never into a layer of the image.
pip_volumes() {
  local pip_conf="$IMAGE_CACHE/run/pip.conf" host_ca index
  mkdir -p "$IMAGE_CACHE/run"
  build_volumes=(--volume "$pip_conf:/etc/pip.conf:ro")
  host_ca="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
  index="${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}"
  {
    echo "[global]"
    if [ -n "$host_ca" ] && [ -r "$host_ca" ]; then
      echo "cert = /etc/dualstream-build/ca.crt"
      build_volumes+=(--volume "$host_ca:/etc/dualstream-build/ca.crt:ro")
    fi
    [ -z "$index" ] || echo "index-url = $index"
  } >"$pip_conf"
}

build() {
  local tag="${1:-localhost/dualstream:dev}" started bud
  bash scripts/install-image-tools.sh
  mkdir -p "$IMAGE_CACHE/debs"
  ensure_base
  pip_volumes
  echo "building $tag from Dockerfile on $base_image"
  started=$SECONDS
  bud=(buildah_ bud --quiet --isolation chroot --layers --format docker "${build_volumes[@]}"
    --build-arg BASE="$base_image")
  # The dependencies stage gets a tag of its own, so pruning keeps it: it is reused until
  # pyproject.toml changes. The layers of the last hour's builds stay too (an unchanged tree
  # builds again in seconds); older ones are pruned, so the storage does not grow without end.
  "${bud[@]}" --target dependencies -t "$DEPENDENCIES_TAG" -f Dockerfile . >/dev/null
  "${bud[@]}" -t "$tag" -f Dockerfile . >/dev/null
  podman "${STORAGE[@]}" image prune --force --filter until=1h >/dev/null 2>&1 || true
  echo "built $tag in $((SECONDS - started))s: $(buildah_ images --noheading --format '{{.Size}}' "$tag" | head -n1)"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  podman)
    shift
    # runc: crun refuses the hybrid cgroup layout some machines have (this one does).
    podman_=(podman "${STORAGE[@]}" --runtime runc)
    if [ "${1:-}" = run ] || [ "${1:-}" = create ]; then
      command=$1
      shift
      # podman's default limits need CAP_SYS_RESOURCE to set, which not every root has (this
      # machine's does not): the container gets the open-file limit this shell has, and at
      # most the 32768 processes podman gives conmon and runc (runc cannot give more).
      processes=$(ulimit -Hu)
      if [ "$processes" = unlimited ] || [ "$processes" -gt 32768 ]; then processes=32768; fi
      # No HEALTHCHECK timer: podman would need systemd for it, which may not run. Run its
      # command with `podman exec` instead.
      exec "${podman_[@]}" "$command" --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" \
        --ulimit "nproc=$processes:$processes" --no-healthcheck "$@"
    fi
    exec "${podman_[@]}" "$@"
    ;;
  *)
    echo "usage: scripts/image.sh build [TAG] | podman ARGS..." >&2
    exit 2
    ;;
esac
