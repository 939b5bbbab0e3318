// Two streams, each scaling its half of an array, built the default way (nvcc streams.cu).
// Prints the sum after both finish (argv[1] elements, default 2^20).
#include <cstdio>
#include <cstdlib>

__global__ void scale(float *x, float factor, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] *= factor;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int half = n / 2;
    float *x;
    cudaMallocManaged(&x, n * sizeof(float));
    for (int i = 0; i < n; i++)
        x[i] = 1;
    cudaStream_t s[2];
    cudaStreamCreate(&s[0]);
    cudaStreamCreate(&s[1]);
    scale<<<(half + 255) / 256, 256, 0, s[0]>>>(x, 2.0f, half);
    scale<<<(n - half + 255) / 256, 256, 0, s[1]>>>(x + half, 3.0f, n - half);
    cudaStreamSynchronize(s[0]);
    cudaStreamSynchronize(s[1]);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += x[i];
    printf("streams %d: sum %.0f\n", n, sum);
    return 0;
}
