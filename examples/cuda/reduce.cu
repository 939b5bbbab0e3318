// A sum in two kernels (per-block partial sums in shared memory, then one block adds them up),
// built the default way (nvcc reduce.cu). Prints the sum of 0..n-1 (argv[1], default 2^20).
#include <cstdio>
#include <cstdlib>

__global__ void partial_sums(const unsigned *in, unsigned long long *partial, int n)
{
    __shared__ unsigned long long s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? in[i] : 0;
    __syncthreads();
    for (int step = blockDim.x / 2; step > 0; step /= 2) {
        if (threadIdx.x < step)
            s[threadIdx.x] += s[threadIdx.x + step];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s[0];
}

__global__ void final_sum(const unsigned long long *partial, int blocks, unsigned long long *out)
{
    unsigned long long acc = 0;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x)
        acc += partial[i];
    atomicAdd(out, acc);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int blocks = (n + 255) / 256;
    unsigned *in;
    unsigned long long *partial, *out;
    cudaMallocManaged(&in, n * sizeof(unsigned));
    cudaMallocManaged(&partial, blocks * sizeof(unsigned long long));
    cudaMallocManaged(&out, sizeof(unsigned long long));
    for (int i = 0; i < n; i++)
        in[i] = i;
    *out = 0;
    partial_sums<<<blocks, 256>>>(in, partial, n);
    final_sum<<<1, 256>>>(partial, blocks, out);
    cudaDeviceSynchronize();
    printf("reduce %d: sum %llu\n", n, *out);
    return 0;
}
