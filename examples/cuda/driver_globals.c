// The kernel of globals.cu driven through the CUDA driver API as the CUDA 13 runtime drives it
// (driver_api.h): before launch L the host writes L + 1 into the kernel's __constant__ `scale`
// (cuLibraryGetGlobal, cuMemcpyHtoD); at the end it reads the result and the __device__ count
// `launched`. With DRIVER_WAIT_DIR set, launches after the first wait (see launch_marker).
// Build: nvcc --fatbin -o globals.fatbin globals.cu
//        cc -O2 -DFATBIN='"globals.fatbin"' driver_globals.c -ldl -o driver_globals
// Run:   ./driver_globals [ELEMENTS] [LAUNCHES]
#include "driver_api.h"

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    open_driver();
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*memset_d8)(uint64_t, unsigned char, size_t) = need("cuMemsetD8", 0);
    CUresult (*htod)(uint64_t, const void *, size_t) = need("cuMemcpyHtoD", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*sync)(void) = need("cuCtxSynchronize", 0);
    CUresult (*get_global)(uint64_t *, size_t *, H, const char *) = need("cuLibraryGetGlobal", 0);
    CUresult (*launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **) = need("cuLaunchKernel", 0);
    H library = load_library();
    H func = kernel_function(library, "_Z10scale_copyPKfPfi");
    uint64_t scale, launched, da, dc;
    size_t size;
    CHECK(get_global(&scale, &size, library, "scale"));
    CHECK(get_global(&launched, &size, library, "launched"));
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *c = malloc(bytes);
    for (int i = 0; i < n; i++)
        a[i] = (float)(i % 1000);
    CHECK(mem_alloc(&da, bytes));
    CHECK(mem_alloc(&dc, bytes));
    CHECK(htod(da, a, bytes));
    CHECK(memset_d8(dc, 0, bytes));
    void *params[] = { &da, &dc, &n };
    for (int l = 0; l < launches; l++) {
        launch_marker(l);
        float s = (float)(l + 1);
        CHECK(htod(scale, &s, sizeof s));
        CHECK(launch(func, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, params, 0));
    }
    CHECK(sync());
    unsigned count;
    CHECK(dtoh(c, dc, bytes));
    CHECK(dtoh(&count, launched, sizeof count));
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += c[i];
    printf("scale_copy: %d elements, %d launches, sum %.0f, launched %u\n", n, launches, sum, count);
    return 0;
}
