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
  # The Dockerfile goes in on stdin. Given by path, BuildKit syncs it incrementally under a key of
  # the build context: two image Dockerfiles of equal size and mtime (a fresh clone writes them in
  # the same clock tick) were taken for one another, and the recorder image got the pipeline's.
  if docker buildx version >/dev/null 2>&1; then
    docker buildx build --platform "$PLATFORM" --load -f - -t "$ref" "$@" "$ROOT" <"$file"
  else
    docker build --platform "$PLATFORM" -f - -t "$ref" "$@" "$ROOT" <"$file"
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
  # every image names itself (SERVICE_NAME): refuse an image built from another one's Dockerfile
  local name
  name=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$REGISTRY/lucid-$1:$TAG" |
         sed -n 's/^SERVICE_NAME=//p')
  if [[ $name != "lucid-$1" ]]; then
    echo "build: $REGISTRY/lucid-$1:$TAG says SERVICE_NAME=$name, not lucid-$1" >&2
    return 1
  fi
}
