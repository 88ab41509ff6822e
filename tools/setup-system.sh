#!/bin/sh
# Debian packages edgekit needs on a build machine and for its test devices. Run as root (CI is root).
#   openssh-server        real SSH test devices on 127.0.0.1
#   g++ cross compilers   rpi4/rpi5/jetson (aarch64) and rpi3-armv7 (armhf) libraries
#   qemu-user-static, binfmt-support, mmdebstrap   the emulated arm64 Raspberry Pi
#   dataset-fashion-mnist real data for compression and the feedback loop
#   binutils              readelf/strings used by tests
set -eu
APT_PACKAGES="openssh-server g++-aarch64-linux-gnu gcc-aarch64-linux-gnu g++-arm-linux-gnueabihf gcc-arm-linux-gnueabihf qemu-user-static binfmt-support mmdebstrap dataset-fashion-mnist binutils strace"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $APT_PACKAGES

# The ONNX Runtime wheel for arm64 test devices (tests/test_peers.py installs it on the emulated Pi with
# `edgekit device setup --install onnxruntime --wheels DIR`): downloaded here, once, so no test downloads.
# The same version as this machine's onnxruntime when one is installed (a fresh machine gets the newest of both).
PYTHON="${PYTHON:-python3}"
PEER_WHEELS="${EDGEKIT_CACHE:-/var/cache/edgekit-test}/peer-wheels-aarch64-cp311"
ORT_SPEC=$("$PYTHON" -c 'import importlib.metadata as m; print("onnxruntime==" + m.version("onnxruntime"))' \
  2>/dev/null || echo "onnxruntime>=1.20")
mkdir -p "$PEER_WHEELS"
"$PYTHON" -m pip download -q --dest "$PEER_WHEELS" --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
  --python-version 3.11 --implementation cp "$ORT_SPEC"
