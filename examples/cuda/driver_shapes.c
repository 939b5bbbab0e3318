// The kernels of kernel_shapes.cu driven through the CUDA driver API as the CUDA 13 runtime
// drives them (driver_api.h): its launches but `hidden`'s (an anonymous namespace's kernel
// is named after the file's hash).
// Build: nvcc --fatbin -o kernel_shapes.fatbin kernel_shapes.cu
//        cc -O2 -DFATBIN='"kernel_shapes.fatbin"' driver_shapes.c -ldl -o driver_shapes
#include "driver_api.h"

struct uchar4_ {
    unsigned char x, y, z, w;
};
struct int2_ {
    int x, y;
};

int main(void)
{
    enum { N = 32 };
    open_driver();
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*memset_d8)(uint64_t, unsigned char, size_t) = need("cuMemsetD8", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*sync)(void) = need("cuCtxSynchronize", 0);
    CUresult (*launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **) = need("cuLaunchKernel", 0);
    H library = load_library();
    uint64_t out, p;
    CHECK(mem_alloc(&out, N * sizeof(long long)));
    CHECK(mem_alloc(&p, N * sizeof(int)));
    CHECK(memset_d8(p, 0, N * sizeof(int)));
    char c = -3;
    _Bool b = 1;
    short s = -300;
    struct uchar4_ color = { 10, 20, 30, 40 };
    unsigned short tag = 500;
    struct int2_ v = { 6000, 70000 };
    void *shapes_params[] = { &c, &b, &s, &color, &tag, &v, &out };
    CHECK(launch(kernel_function(library, "_Z6shapescbs6uchar43Tag4int2Px"), 1, 1, 1, N, 1, 1, 0, 0, shapes_params, 0));
    void *p_params[] = { &p };
    const char *on_p[] = { "_ZN9shapes_ns5namedEPi", "_Z6scaledILi5EEvPi", "_Z16odd_threads_exitPi" };
    for (int k = 0; k < 3; k++)
        CHECK(launch(kernel_function(library, on_p[k]), 1, 1, 1, N, 1, 1, 0, 0, p_params, 0));
    CHECK(sync());
    long long h_out[N];
    int h_p[N];
    CHECK(dtoh(h_out, out, sizeof h_out));
    CHECK(dtoh(h_p, p, sizeof h_p));
    long long sum = 0, psum = 0;
    for (int i = 0; i < N; i++) {
        sum += h_out[i];
        psum += h_p[i];
    }
    printf("kernel_shapes: shapes sum %lld, p sum %lld\n", sum, psum);
    return 0;
}
