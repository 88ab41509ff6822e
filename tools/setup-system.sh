#!/bin/sh
# Debian packages edgekit needs on a build machine and for its test devices. Run as root (CI is root).
#   openssh-server        real SSH test devices on 127.0.0.1
#   g++ cross compilers   rpi4/rpi5/jetson (aarch64) and rpi3-armv7 (armhf) libraries
#   qemu-user-static, binfmt-support, mmdebstrap   the emulated arm64 Raspberry Pi
#   dataset-fashion-mnist real data for compression and the feedback loop
#   binutils              readelf/strings used by tests
set -eu
APT_PACKAGES="openssh-server g++-aarch64-linux-gnu gcc-aarch64-linux-gnu g++-arm-linux-gnueabihf gcc-arm-linux-gnueabihf qemu-user-static binfmt-support mmdebstrap dataset-fashion-mnist binutils"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $APT_PACKAGES
