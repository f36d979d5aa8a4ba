#!/usr/bin/env bash
# Build the base, the five session images and the Dagster image for one platform:
#   build/scripts/build-all-session-images.sh                      # pickme/lucid-*:latest-arm64
#   PLATFORM=linux/amd64 build/scripts/build-all-session-images.sh # pickme/lucid-*:latest-amd64
#   REGISTRY=registry.example.org/lucid TAG=1.0-arm64 build/scripts/build-all-session-images.sh
source "$(dirname "$0")/lib.sh"
t0=$SECONDS
build_base
for image in session-pipeline session-recorder chunk-processor session-storage session-api dagster; do
  build_image "$image"
done
echo "all images for $PLATFORM in $((SECONDS - t0)) s:" >&2
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^$REGISTRY/lucid-[a-z-]+:$TAG " >&2
