// One unit of relocatable device code (`nvcc -rdc=true`), linked with linked_b.cu: a kernel
// that calls a function and counts its blocks in a variable the other unit defines, and a
// template kernel both units instantiate (a `.weak` entry in each unit's PTX; the device
// linker keeps one).
// Build: nvcc -rdc=true --fatbin -o linked_a.fatbin linked_a.cu  (and linked_b.cu alike)
//        nvcc -rdc=true -c linked_a.cu linked_b.cu && nvcc -dlink linked_a.o linked_b.o --fatbin -o linked.fatbin
extern __device__ unsigned int blocks_seen;
// Defined in linked_b.cu: a call across units, which only the device linker resolves.
__device__ int scaled(int x, int factor);

template <int N> __global__ void shift(int *p)
{
    p[blockIdx.x * blockDim.x + threadIdx.x] += N;
}
template __global__ void shift<5>(int *);

__global__ void scale(int *p, int factor)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    p[i] = scaled(p[i], factor);
    if (threadIdx.x == 0)
        atomicAdd(&blocks_seen, 1);
}
