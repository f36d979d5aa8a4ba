# Conveniences over the scripts; none of these is needed by CI except what .ci/run calls.
.PHONY: up test images images-arm64 compose-up compose-down smoke smoke-arm64

up:            ## the embedded platform
	./scripts/lucid up

test:          ## the test suite (as CI runs it, without the compose smoke test)
	./scripts/test

images:        ## every image for this host's architecture
	PLATFORM=linux/$$(uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/') build/scripts/build-all-session-images.sh

images-arm64:  ## every image for the Raspberry Pi 5 (linux/arm64; emulated on a PC)
	PLATFORM=linux/arm64 build/scripts/build-all-session-images.sh

compose-up:
	./scripts/compose up

compose-down:
	./scripts/compose down

smoke:         ## build, bring the stack up, seal and verify one session, tear down (CI runs this)
	python3 scripts/compose_smoke.py

smoke-arm64:   ## the same for linux/arm64 under qemu emulation (slow: not part of CI)
	python3 scripts/compose_smoke.py --arch arm64
