// Kernels captured into a CUDA graph and launched several times, built the default way
// (nvcc graph.cu). Prints the sum after argv[2] (default 5) graph launches over argv[1]
// elements (default 2^16).
#include <cstdio>
#include <cstdlib>

__global__ void increment(int *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += 1;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 16;
    int launches = argc > 2 ? atoi(argv[2]) : 5;
    int *x;
    cudaMallocManaged(&x, n * sizeof(int));
    for (int i = 0; i < n; i++)
        x[i] = 0;
    cudaStream_t s;
    cudaStreamCreate(&s);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
    for (int k = 0; k < 3; k++)
        increment<<<(n + 255) / 256, 256, 0, s>>>(x, n);
    cudaStreamEndCapture(s, &graph);
    cudaGraphInstantiate(&exec, graph, 0);
    for (int l = 0; l < launches; l++)
        cudaGraphLaunch(exec, s);
    cudaStreamSynchronize(s);
    long long sum = 0;
    for (int i = 0; i < n; i++)
        sum += x[i];
    printf("graph %d x %d: sum %lld\n", n, launches, sum);
    return 0;
}
