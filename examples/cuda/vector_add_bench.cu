// The vector add of vector_add.cu timed with CUDA events: argv[1] elements (default 2^24),
// argv[2] timed launches (default 50) after 5 untimed ones. Prints the mean time of one launch
// and a checksum (built the default way: nvcc vector_add_bench.cu).
#include <cstdio>
#include <cstdlib>

__global__ void vector_add(const float *a, const float *b, float *c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = a[i] + b[i];
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 24;
    int launches = argc > 2 ? atoi(argv[2]) : 50;
    size_t bytes = (size_t)n * sizeof(float);
    float *a, *b, *c;
    cudaMalloc(&a, bytes);
    cudaMalloc(&b, bytes);
    cudaMalloc(&c, bytes);
    cudaMemset(a, 0, bytes);
    cudaMemset(b, 0, bytes);
    int blocks = (n + 255) / 256;
    for (int i = 0; i < 5; i++)
        vector_add<<<blocks, 256>>>(a, b, c, n);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    cudaEventRecord(start);
    for (int i = 0; i < launches; i++)
        vector_add<<<blocks, 256>>>(a, b, c, n);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    printf("vector_add_bench %d threads: %.2f us per launch\n", blocks * 256, ms * 1000 / launches);
    return cudaGetLastError() != cudaSuccess;
}
