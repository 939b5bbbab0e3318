// The other unit of linked_a.cu's relocatable device code: it defines the variable both use
// and the function linked_a.cu's kernel calls.
__device__ unsigned int blocks_seen;

__device__ int scaled(int x, int factor)
{
    return x * factor;
}

template <int N> __global__ void shift(int *p)
{
    p[blockIdx.x * blockDim.x + threadIdx.x] += N;
}
template __global__ void shift<5>(int *);

__global__ void fill(int *p)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    p[i] = i;
    if (threadIdx.x == 0)
        atomicAdd(&blocks_seen, 1);
}

// A kernel that launches a kernel (dynamic parallelism): its unit calls the device runtime,
// which the device link takes from libcudadevrt.a (and so must a relink). The examples do not
// launch it.
__global__ void child(int *p)
{
    p[threadIdx.x] += 1;
}

__global__ void parent(int *p)
{
    if (threadIdx.x == 0)
        child<<<1, 32>>>(p);
}
