#!/usr/bin/env bash
# Build ${REGISTRY:-pickme}/lucid-session-api:${TAG:-latest-arm64} for ${PLATFORM:-linux/arm64} (see lib.sh).
source "$(dirname "$0")/lib.sh"
build_image session-api
