#!/usr/bin/env bash
# Installs what building and testing bpftime-rs needs on Debian 12, idempotently.
# Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail

need_pkgs=()
# g++: the C++ target (exceptions through return probes); libbpf-tools, bpftrace and bpftool: real tools the syscall server is tested with;
# systemtap-sdt-dev: sys/sdt.h for the USDT target; libc6-dbg: libc's separate debug symbols,
# where bpftrace and the agent find its local functions; golang-go: the Go target (probes on
# goroutines' small stacks); valgrind: programs traced under it (and scripts/hit-cost.sh).
for p in clang-14 llvm-14 libbpf-dev gcc g++ make pkg-config libbpf-tools bpftrace bpftool systemtap-sdt-dev libc6-dbg golang-go valgrind; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup: installing ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# llvm-objdump is used by the disassembly test; Debian's llvm-14 installs it versioned.
if ! command -v llvm-objdump >/dev/null 2>&1 && [ -x /usr/bin/llvm-objdump-14 ]; then
    ln -sf /usr/bin/llvm-objdump-14 /usr/local/bin/llvm-objdump 2>/dev/null || true
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: installing Rust with rustup"
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

# Lints run in the test command: rustfmt and clippy (a minimal rustup profile lacks them).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "setup: adding rustfmt and clippy"
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# ptxas and nvcc for the GPU backend's tests (no GPU needed): NVIDIA's pip wheel, into
# /opt/bpftime-cuda (tests/src/cuda_tools.rs looks there).
CUDA_PREFIX=/opt/bpftime-cuda
if ! ls "$CUDA_PREFIX"/nvidia/*/bin/ptxas >/dev/null 2>&1; then
    echo "setup: installing ptxas/nvcc (pip wheel nvidia-cuda-nvcc) into $CUDA_PREFIX"
    command -v pip3 >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"; $SUDO apt-get install -y -qq python3-pip >/dev/null; }
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$CUDA_PREFIX" nvidia-cuda-nvcc 2>/dev/null \
        || $SUDO python3 -m pip install --quiet --disable-pip-version-check --target "$CUDA_PREFIX" nvidia-cuda-nvcc
fi
