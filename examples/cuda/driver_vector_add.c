// The vector add of vector_add.cu, driven through the CUDA driver API exactly as the CUDA 13
// runtime drives it: dlopen("libcuda.so.1"), dlsym("cuGetProcAddress_v2") once, every other
// entry point through it (cuGetProcAddress asked for itself first), the device code loaded
// lazily with cuLibraryLoadData from a __cudaFatBinaryWrapper, kernels found with
// cuLibraryGetKernel + cuKernelGetFunction, launched with cuLaunchKernel on the legacy and on
// the per-thread default stream and with cuLaunchKernelEx.
//
// Build: nvcc --fatbin -o vector_add.fatbin vector_add.cu
//        cc -O2 -DFATBIN='"vector_add.fatbin"' driver_vector_add.c -ldl -o driver_vector_add
// Run:   ./driver_vector_add [ELEMENTS] [LAUNCHES]   (prints the sum of the result once per run)
#include "driver_api.h"

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    open_driver();
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*htod)(uint64_t, const void *, size_t) = need("cuMemcpyHtoD", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*sync)(void) = need("cuCtxSynchronize", 0);
    typedef CUresult (*Launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);
    Launch launch = need("cuLaunchKernel", 0);
    Launch launch_ptsz = need("cuLaunchKernel", 2 /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */);
    CUresult (*launch_ex)(const LaunchConfig *, H, void **, void **) = need("cuLaunchKernelEx", 0);
    H func = kernel_function(load_library(), "_Z10vector_addPKfS0_Pfi");

    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    for (int i = 0; i < n; i++) {
        a[i] = i;
        b[i] = 2 * i;
    }
    uint64_t da, db, dc;
    CHECK(mem_alloc(&da, bytes));
    CHECK(mem_alloc(&db, bytes));
    CHECK(mem_alloc(&dc, bytes));
    CHECK(htod(da, a, bytes));
    CHECK(htod(db, b, bytes));
    void *params[] = { &da, &db, &dc, &n };
    unsigned blocks = (n + 255) / 256;
    for (int l = 0; l < launches; l++) {
        launch_marker(l);
        if (l % 3 == 0)
            CHECK(launch(func, blocks, 1, 1, 256, 1, 1, 0, 0, params, 0));
        else if (l % 3 == 1)
            CHECK(launch_ptsz(func, blocks, 1, 1, 256, 1, 1, 0, 0, params, 0));
        else {
            LaunchConfig cfg = { { blocks, 1, 1 }, { 256, 1, 1 }, 0, 0, 0, 0 };
            CHECK(launch_ex(&cfg, func, params, 0));
        }
    }
    CHECK(sync());
    CHECK(dtoh(c, dc, bytes));
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += c[i];
    printf("vector_add: %d elements, %d launches, sum %.0f\n", n, launches, sum);
    return 0;
}
