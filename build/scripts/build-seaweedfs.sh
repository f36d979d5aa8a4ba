#!/usr/bin/env bash
# Build ${REGISTRY:-pickme}/lucid-seaweedfs:${TAG:-latest-arm64} for ${PLATFORM:-linux/arm64} (see lib.sh): the
# scale-out overlay's S3 + Iceberg REST catalog (docker-compose.scale.yml).
source "$(dirname "$0")/lib.sh"
build_image seaweedfs
