#!/usr/bin/env bash
# Build ${REGISTRY:-pickme}/lucid-seaweedfs:${TAG:-latest-arm64} for ${PLATFORM:-linux/arm64} (see lib.sh): the
# scale-out overlay's S3 + Iceberg REST catalog (docker-compose.scale.yml). It does not start from
# lucid-base (no Lucid code in it), so the base is not built for it.
source "$(dirname "$0")/lib.sh"
_build "$ROOT/build/seaweedfs/Dockerfile" "$REGISTRY/lucid-seaweedfs:$TAG"
