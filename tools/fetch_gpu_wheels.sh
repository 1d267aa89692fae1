#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, x86-64, torch already there) of the packages
# maskdla needs that its image lacks, into .whl/ (ignored by git; name it in the device
# tool's `carry`). Run here, where the package registry is reachable.
set -eu
mkdir -p .whl
for package in pycocotools shapely simplejpeg; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$package"
done
ls -l .whl
