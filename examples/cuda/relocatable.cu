// Device code as a relocatable (`nvcc -rdc=true`) build leaves it: a template's kernel is a
// `.weak .entry` in the PTX, and a device function of its own is a function of the SASS, not
// a kernel. Build: nvcc -rdc=true -o relocatable relocatable.cu
#include <cstdio>

__device__ __noinline__ int cubed(int x)
{
    return x * x * x;
}

template <int N> __global__ void powers(int *p)
{
    p[threadIdx.x] = cubed(threadIdx.x) + N;
}

int main()
{
    int *p, h[8];
    cudaMalloc(&p, sizeof h);
    powers<1><<<1, 8>>>(p);
    cudaMemcpy(h, p, sizeof h, cudaMemcpyDeviceToHost);
    printf("relocatable: p[7] = %d\n", h[7]);
    return 0;
}
