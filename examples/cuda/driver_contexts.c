// The vector add of vector_add.cu in three contexts one after another, each torn down a
// different way, as long-running CUDA programs and test suites do (cudaDeviceReset between
// phases, a context per job):
//   round 1: the primary context retained twice (as a runtime and a library using it would),
//            the image loaded as a library, LAUNCHES launches, synchronised and read back, one
//            release (not the last: the context stays), as many launches again, the library
//            unloaded, the second release (the last retain's: the driver destroys the context);
//   round 2: the primary context retained again (a new one, behind the same handle), the same
//            again, then reset (cuDevicePrimaryCtxReset, what cudaDeviceReset calls);
//   round 3: a context of its own (cuCtxCreate), the image loaded as a module, LAUNCHES launches,
//            and the context destroyed without synchronising first (destroying waits for them).
// The driver's handles and device addresses of one round may come back in the next.
// Build: nvcc --fatbin -o vector_add.fatbin vector_add.cu
//        cc -O2 -DFATBIN='"vector_add.fatbin"' driver_contexts.c -ldl -o driver_contexts
// Run:   ./driver_contexts [ELEMENTS] [LAUNCHES]   (prints the sum of rounds 1 and 2)
#include "driver_api.h"

static const char *const KERNEL = "_Z10vector_addPKfS0_Pfi";

typedef CUresult (*Launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);

// Inputs copied to the device, LAUNCHES launches of `func`; with `read_back`, synchronised and
// the sum of the result printed for `round`.
static void run_round(int round, H func, int n, int launches, int read_back)
{
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*htod)(uint64_t, const void *, size_t) = need("cuMemcpyHtoD", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*sync)(void) = need("cuCtxSynchronize", 0);
    Launch launch = need("cuLaunchKernel", 0);
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    for (int i = 0; i < n; i++) {
        a[i] = i * round;
        b[i] = 2 * i;
    }
    uint64_t da, db, dc;
    CHECK(mem_alloc(&da, bytes));
    CHECK(mem_alloc(&db, bytes));
    CHECK(mem_alloc(&dc, bytes));
    CHECK(htod(da, a, bytes));
    CHECK(htod(db, b, bytes));
    void *params[] = { &da, &db, &dc, &n };
    for (int l = 0; l < launches; l++)
        CHECK(launch(func, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, params, 0));
    if (read_back) {
        CHECK(sync());
        CHECK(dtoh(c, dc, bytes));
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += c[i];
        printf("round %d: %d elements, %d launches, sum %.0f\n", round, n, launches, sum);
    } else {
        printf("round %d: %d launches queued\n", round, launches);
    }
    free(a);
    free(b);
    free(c);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    open_driver();
    CUresult (*init)(unsigned) = need("cuInit", 0);
    CUresult (*device_get)(int *, int) = need("cuDeviceGet", 0);
    CUresult (*retain)(H *, int) = need("cuDevicePrimaryCtxRetain", 0);
    CUresult (*release)(int) = need("cuDevicePrimaryCtxRelease", 0);
    CUresult (*reset)(int) = need("cuDevicePrimaryCtxReset", 0);
    CUresult (*set_current)(H) = need("cuCtxSetCurrent", 0);
    CUresult (*ctx_create)(H *, unsigned, int) = need("cuCtxCreate", 0);
    CUresult (*ctx_destroy)(H) = need("cuCtxDestroy", 0);
    CUresult (*library_load)(H *, const void *, void *, void *, unsigned, void *, void *, unsigned) = need("cuLibraryLoadData", 0);
    CUresult (*library_unload)(H) = need("cuLibraryUnload", 0);
    CUresult (*module_load)(H *, const void *) = need("cuModuleLoadData", 0);
    CUresult (*module_function)(H *, H, const char *) = need("cuModuleGetFunction", 0);
    int dev;
    H ctx, library, module, func;
    CHECK(init(0));
    CHECK(device_get(&dev, 0));

    for (int round = 1; round <= 2; round++) {
        CHECK(retain(&ctx, dev));
        if (round == 1)
            CHECK(retain(&ctx, dev));
        CHECK(set_current(ctx));
        CHECK(library_load(&library, driver_image(), 0, 0, 0, 0, 0, 0));
        run_round(round, kernel_function(library, KERNEL), n, launches, 1);
        if (round == 1) {
            CHECK(release(dev));
            run_round(round, kernel_function(library, KERNEL), n, launches, 1);
        }
        CHECK(library_unload(library));
        if (round == 1) {
            CHECK(release(dev));
        } else {
            CHECK(reset(dev));
        }
    }

    CHECK(ctx_create(&ctx, 0, dev));
    CHECK(module_load(&module, driver_image()));
    CHECK(module_function(&func, module, KERNEL));
    run_round(3, func, n, launches, 0);
    CHECK(ctx_destroy(ctx));
    return 0;
}
