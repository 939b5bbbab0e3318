#!/usr/bin/env bash
# Every test: unit, data-driven, conformance (when ../shared/conformance exists), differential,
# clang-built objects, CLI processes, and the benchmarks run once each as tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

if [ -f ../shared/conformance/vectors.jsonl ] || [ -n "${BPFTIME_CONFORMANCE_DIR:-}" ]; then
    echo "conformance vectors: found; the conformance tests run them"
else
    echo "conformance vectors: ../shared/conformance is absent; the conformance tests skip"
fi
# The GPU backend's tests need ptxas (installed by setup): fail rather than skip without it.
export BPFTIME_REQUIRE_CUDA_TOOLS=1
# The tools the syscall server is tested with (libbpf-tools, bpftrace): setup installs them.
export BPFTIME_REQUIRE_TOOLS=1
# A clean clone gains nothing from incremental state; it only fills the disk (GBs).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Style and lints first: cheap, and they fail fast.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The agent (a cdylib) and the binaries must be built for the tests that run them.
cargo build --workspace
cargo test --workspace --all-targets
cargo test --workspace --doc
