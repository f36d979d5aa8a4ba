#!/usr/bin/env bash
# The seed's name for build-chunk-processor.sh.
exec "$(dirname "$0")/build-chunk-processor.sh" "$@"
