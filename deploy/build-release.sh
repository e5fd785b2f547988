#!/bin/sh
# The release build, one command for everyone: the Dockerfile's build stage runs this, and so
# does CI, so the image is built the way the tested binary is.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --locked --bin ftpsgate
