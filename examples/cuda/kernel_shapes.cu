// Kernels shaped as real applications' are, for CUDA probes to find and read: parameters
// narrower than 4 bytes and structs passed by value, a template, a namespace, an anonymous
// namespace, and threads ended by inline assembly's `exit` rather than a return.
// Build: nvcc -O2 -o kernel_shapes kernel_shapes.cu   (or --fatbin for driver_shapes.c)
// Run:   ./kernel_shapes   (prints what each kernel computed)
#include <cstdio>

struct Tag {
    unsigned short bits;
};

__global__ void shapes(char c, bool b, short s, uchar4 color, Tag tag, int2 v, long long *out)
{
    out[threadIdx.x] = c + b + s + color.x + color.w + tag.bits + v.x + v.y + threadIdx.x;
}

template <int N> __global__ void scaled(int *p)
{
    p[threadIdx.x] *= N;
}

namespace shapes_ns {
__global__ void named(int *p)
{
    p[threadIdx.x] += 1;
}
} // namespace shapes_ns

namespace {
__global__ void hidden(int *p)
{
    p[threadIdx.x] -= 3;
}
} // namespace

__global__ void odd_threads_exit(int *p)
{
    if (threadIdx.x & 1)
        asm volatile("exit;");
    p[threadIdx.x] = 7;
}

int main()
{
    const int n = 32;
    long long *out;
    int *p;
    cudaMalloc(&out, n * sizeof(long long));
    cudaMalloc(&p, n * sizeof(int));
    cudaMemset(p, 0, n * sizeof(int));
    shapes<<<1, n>>>(-3, true, -300, make_uchar4(10, 20, 30, 40), Tag{ 500 }, make_int2(6000, 70000), out);
    shapes_ns::named<<<1, n>>>(p);
    scaled<5><<<1, n>>>(p);
    hidden<<<1, n>>>(p);
    odd_threads_exit<<<1, n>>>(p);
    long long h_out[n];
    int h_p[n];
    cudaMemcpy(h_out, out, sizeof h_out, cudaMemcpyDeviceToHost);
    cudaMemcpy(h_p, p, sizeof h_p, cudaMemcpyDeviceToHost);
    long long sum = 0, psum = 0;
    for (int i = 0; i < n; i++) {
        sum += h_out[i];
        psum += h_p[i];
    }
    printf("kernel_shapes: shapes sum %lld, p sum %lld\n", sum, psum);
    return 0;
}
