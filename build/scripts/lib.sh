# Shared by the build-*.sh scripts (sourced, not run).
#   REGISTRY  image name prefix                      default pickme
#   PLATFORM  linux/arm64 (the Pi 5) or linux/amd64  default linux/arm64
#   TAG       image tag                              default latest-<arch of PLATFORM>
# Uses `docker buildx build --load` where the buildx plugin exists, else `docker build --platform`
# with BuildKit. Every image builds on lucid-base (build/base/Dockerfile), made first when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REGISTRY=${REGISTRY:-pickme}
PLATFORM=${PLATFORM:-linux/arm64}
TAG=${TAG:-latest-${PLATFORM##*/}}
export DOCKER_BUILDKIT=1

_build() { # dockerfile image-ref [build args...]
  local file=$1 ref=$2; shift 2
  local t0=$SECONDS
  if docker buildx version >/dev/null 2>&1; then
    docker buildx build --platform "$PLATFORM" --load -f "$file" -t "$ref" "$@" "$ROOT"
  else
    docker build --platform "$PLATFORM" -f "$file" -t "$ref" "$@" "$ROOT"
  fi
  echo "built $ref for $PLATFORM in $((SECONDS - t0)) s" >&2
}

build_base() {
  # always rebuilt (the layer cache makes an unchanged base take seconds), unless the caller
  # has just built it (build-all-session-images.sh sets LUCID_BASE_BUILT)
  if [[ ${LUCID_BASE_BUILT:-} != "$REGISTRY/lucid-base:$TAG" ]]; then
    _build "$ROOT/build/base/Dockerfile" "$REGISTRY/lucid-base:$TAG"
    export LUCID_BASE_BUILT="$REGISTRY/lucid-base:$TAG"
  fi
}

build_image() { # directory under build/ = image name without the lucid- prefix
  build_base
  _build "$ROOT/build/$1/Dockerfile" "$REGISTRY/lucid-$1:$TAG" --build-arg "BASE=$REGISTRY/lucid-base:$TAG"
}
