// The vector add of vector_add.cu through the driver API called directly, the program linked
// against libcuda (-lcuda) as the CUDA driver API samples are: no dlopen, no cuGetProcAddress.
// The fatbin is loaded with cuModuleLoadData (or, given a MODULE_FILE, with cuModuleLoad from
// that file), the kernel found with cuModuleGetFunction and launched with cuLaunchKernel
// LAUNCHES times, then cuCtxSynchronize and cuMemcpyDtoH.
// Build: nvcc --fatbin -o vector_add.fatbin vector_add.cu
//        cc -O2 -DFATBIN='"vector_add.fatbin"' driver_direct.c -lcuda -o driver_direct
// Run:   ./driver_direct [ELEMENTS] [LAUNCHES] [MODULE_FILE]   (prints the sum of the result)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef FATBIN
#error "define FATBIN as the path of the fatbin to embed"
#endif

__asm__(".section .rodata\n.balign 16\n.globl direct_fatbin\ndirect_fatbin:\n.incbin \"" FATBIN "\"\n.previous\n");
extern const unsigned char direct_fatbin[];

// The entry points as cuda.h declares them (its macros name the _v2 versions).
typedef int CUresult;
typedef void *H;
CUresult cuInit(unsigned flags);
CUresult cuDeviceGet(int *dev, int ordinal);
CUresult cuDevicePrimaryCtxRetain(H *ctx, int dev);
CUresult cuCtxSetCurrent(H ctx);
CUresult cuModuleLoad(H *module, const char *fname);
CUresult cuModuleLoadData(H *module, const void *image);
CUresult cuModuleGetFunction(H *f, H module, const char *name);
CUresult cuMemAlloc_v2(uint64_t *p, size_t n);
CUresult cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t n);
CUresult cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t n);
CUresult cuLaunchKernel(H f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, H stream,
                        void **params, void **extra);
CUresult cuCtxSynchronize(void);

#define CHECK(call)                                                       \
    do {                                                                  \
        CUresult r_ = (call);                                             \
        if (r_ != 0) {                                                    \
            fprintf(stderr, "%s failed: %d\n", #call, r_);                \
            exit(1);                                                      \
        }                                                                 \
    } while (0)

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    int dev;
    H ctx, module, func;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    if (argc > 3)
        CHECK(cuModuleLoad(&module, argv[3]));
    else
        CHECK(cuModuleLoadData(&module, direct_fatbin));
    CHECK(cuModuleGetFunction(&func, module, "_Z10vector_addPKfS0_Pfi"));
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    for (int i = 0; i < n; i++) {
        a[i] = i;
        b[i] = 2 * i;
    }
    uint64_t da, db, dc;
    CHECK(cuMemAlloc_v2(&da, bytes));
    CHECK(cuMemAlloc_v2(&db, bytes));
    CHECK(cuMemAlloc_v2(&dc, bytes));
    CHECK(cuMemcpyHtoD_v2(da, a, bytes));
    CHECK(cuMemcpyHtoD_v2(db, b, bytes));
    void *params[] = { &da, &db, &dc, &n };
    for (int l = 0; l < launches; l++)
        CHECK(cuLaunchKernel(func, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, params, 0));
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH_v2(c, dc, bytes));
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += c[i];
    printf("vector_add: %d elements, %d launches, sum %.0f\n", n, launches, sum);
    return 0;
}
