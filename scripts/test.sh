#!/usr/bin/env bash
# Every test: unit, data-driven, conformance (when ../shared/conformance exists), differential,
# clang-built objects, CLI processes, and the benchmarks run once each as tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo test --workspace --all-targets
cargo test --workspace --doc
