// A tiled matrix multiply (shared memory, a 2-D grid), built the default way (nvcc gemm.cu).
// Prints a checksum of C = A x B for n x n matrices (argv[1], default 512). With argv[2]
// (launches), times that many launches with CUDA events after 5 untimed ones and prints the
// mean time of one too (the benchmark of scripts/gpu-check.sh).
#include <cstdio>
#include <cstdlib>

#define TILE 16

__global__ void gemm(const float *a, const float *b, float *c, int n)
{
    __shared__ float as[TILE][TILE], bs[TILE][TILE];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    float acc = 0;
    for (int t = 0; t < n; t += TILE) {
        as[ty][tx] = row < n && t + tx < n ? a[row * n + t + tx] : 0;
        bs[ty][tx] = col < n && t + ty < n ? b[(t + ty) * n + col] : 0;
        __syncthreads();
        for (int k = 0; k < TILE; k++)
            acc += as[ty][k] * bs[k][tx];
        __syncthreads();
    }
    if (row < n && col < n)
        c[row * n + col] = acc;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 512;
    size_t bytes = (size_t)n * n * sizeof(float);
    float *a, *b, *c;
    cudaMallocManaged(&a, bytes);
    cudaMallocManaged(&b, bytes);
    cudaMallocManaged(&c, bytes);
    for (int i = 0; i < n * n; i++) {
        a[i] = i % 7;
        b[i] = (i % 5) * 0.5f;
    }
    dim3 block(TILE, TILE), grid((n + TILE - 1) / TILE, (n + TILE - 1) / TILE);
    gemm<<<grid, block>>>(a, b, c, n);
    cudaDeviceSynchronize();
    int launches = argc > 2 ? atoi(argv[2]) : 0;
    if (launches > 0) {
        for (int i = 0; i < 5; i++)
            gemm<<<grid, block>>>(a, b, c, n);
        cudaEvent_t start, stop;
        cudaEventCreate(&start);
        cudaEventCreate(&stop);
        cudaEventRecord(start);
        for (int i = 0; i < launches; i++)
            gemm<<<grid, block>>>(a, b, c, n);
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        printf("gemm %d (%d threads): %.2f us per launch\n", n, grid.x * grid.y * TILE * TILE, ms * 1000 / launches);
    }
    double sum = 0;
    for (int i = 0; i < n * n; i++)
        sum += c[i];
    printf("gemm %d: sum %.0f\n", n, sum);
    return 0;
}
