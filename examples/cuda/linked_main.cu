// The host side of linked_a.cu + linked_b.cu as an application of relocatable device code
// built the usual way: nvcc -rdc=true -o linked linked_a.cu linked_b.cu linked_main.cu
// (the CUDA runtime registers the device-linked code with its units; a GPU the linked machine
// code is not for JIT-links the units' PTX). Prints what examples/cuda/driver_linked.c prints.
#include <cstdio>
#include <cstdlib>

__global__ void fill(int *p);
__global__ void scale(int *p, int factor);
template <int N> __global__ void shift(int *p);
extern __device__ unsigned int blocks_seen;

int main(int argc, char **argv)
{
    // Whole blocks of 256 (the kernels do not test the bounds).
    int n = ((argc > 1 ? atoi(argv[1]) : 1 << 16) + 255) / 256 * 256;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    int *p;
    if (cudaMalloc(&p, n * sizeof(int)) != cudaSuccess) {
        fprintf(stderr, "no CUDA device\n");
        return 2;
    }
    unsigned blocks = n / 256;
    for (int l = 0; l < launches; l++) {
        fill<<<blocks, 256>>>(p);
        scale<<<blocks, 256>>>(p, 3);
        shift<5><<<blocks, 256>>>(p);
    }
    int *h = (int *)malloc(n * sizeof(int));
    cudaMemcpy(h, p, n * sizeof(int), cudaMemcpyDeviceToHost);
    long long sum = 0;
    for (int i = 0; i < n; i++)
        sum += h[i];
    unsigned seen = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&seen, blocks_seen, sizeof seen);
    if (e != cudaSuccess) {
        fprintf(stderr, "%s\n", cudaGetErrorString(e));
        return 1;
    }
    printf("linked: %d elements, %d launches, sum %lld, blocks seen %u\n", n, launches, sum, seen);
    return 0;
}
