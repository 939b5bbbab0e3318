// The vector add of vector_add.cu through the driver API called directly, the program linked
// against libcuda (-lcuda) as the CUDA driver API samples are: no dlopen, no cuGetProcAddress.
// The fatbin is loaded with cuModuleLoadData (or, given a MODULE_FILE, with cuModuleLoad from
// that file), the kernel found with cuModuleGetFunction and launched with cuLaunchKernel
// LAUNCHES times, then cuCtxSynchronize and cuMemcpyDtoH. With DRIVER_WAIT_DIR set, launches
// after the first wait for a file named after them there (stderr says "before launch N").
// Built with -DBY_NAME, it opens libcuda.so.1 itself and looks each entry point up by name
// with dlsym (as ctypes-style bindings do), again without cuGetProcAddress.
// Build: nvcc --fatbin -o vector_add.fatbin vector_add.cu
//        cc -O2 -DFATBIN='"vector_add.fatbin"' driver_direct.c -lcuda -o driver_direct
//        cc -O2 -DFATBIN='"vector_add.fatbin"' -DBY_NAME driver_direct.c -ldl -o driver_by_name
// Run:   ./driver_direct [ELEMENTS] [LAUNCHES] [MODULE_FILE]   (prints the sum of the result)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef FATBIN
#error "define FATBIN as the path of the fatbin to embed"
#endif

__asm__(".section .rodata\n.balign 16\n.globl direct_fatbin\ndirect_fatbin:\n.incbin \"" FATBIN "\"\n.previous\n");
extern const unsigned char direct_fatbin[];

// The entry points as cuda.h declares them (its macros name the _v2 versions): functions of
// libcuda, or (BY_NAME) pointers that bind_driver() fills.
typedef int CUresult;
typedef void *H;
#ifdef BY_NAME
#include <dlfcn.h>
#define ENTRY(name, params) static CUresult(*name) params
#else
#define ENTRY(name, params) CUresult name params
#endif
ENTRY(cuInit, (unsigned flags));
ENTRY(cuDeviceGet, (int *dev, int ordinal));
ENTRY(cuDevicePrimaryCtxRetain, (H * ctx, int dev));
ENTRY(cuCtxSetCurrent, (H ctx));
ENTRY(cuModuleLoad, (H * module, const char *fname));
ENTRY(cuModuleLoadData, (H * module, const void *image));
ENTRY(cuModuleGetFunction, (H * f, H module, const char *name));
ENTRY(cuMemAlloc_v2, (uint64_t * p, size_t n));
ENTRY(cuMemcpyHtoD_v2, (uint64_t dst, const void *src, size_t n));
ENTRY(cuMemcpyDtoH_v2, (void *dst, uint64_t src, size_t n));
ENTRY(cuLaunchKernel, (H f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, H stream,
                       void **params, void **extra));
ENTRY(cuCtxSynchronize, (void));

static void bind_driver(void)
{
#ifdef BY_NAME
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        exit(1);
    }
#define BIND(name)                                          \
    do {                                                    \
        *(void **)&name = dlsym(lib, #name);                \
        if (!name) {                                        \
            fprintf(stderr, "libcuda has no %s\n", #name); \
            exit(1);                                        \
        }                                                   \
    } while (0)
    BIND(cuInit);
    BIND(cuDeviceGet);
    BIND(cuDevicePrimaryCtxRetain);
    BIND(cuCtxSetCurrent);
    BIND(cuModuleLoad);
    BIND(cuModuleLoadData);
    BIND(cuModuleGetFunction);
    BIND(cuMemAlloc_v2);
    BIND(cuMemcpyHtoD_v2);
    BIND(cuMemcpyDtoH_v2);
    BIND(cuLaunchKernel);
    BIND(cuCtxSynchronize);
#endif
}

#define CHECK(call)                                                       \
    do {                                                                  \
        CUresult r_ = (call);                                             \
        if (r_ != 0) {                                                    \
            fprintf(stderr, "%s failed: %d\n", #call, r_);                \
            exit(1);                                                      \
        }                                                                 \
    } while (0)

static void before_launch(int launch)
{
    const char *dir = getenv("DRIVER_WAIT_DIR");
    if (!dir || launch == 0)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%d", dir, launch);
    fprintf(stderr, "before launch %d\n", launch);
    for (int i = 0; i < 12000 && access(path, F_OK) != 0; i++)
        usleep(5000);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    int dev;
    H ctx, module, func;
    bind_driver();
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
    for (int l = 0; l < launches; l++) {
        before_launch(l);
        CHECK(cuLaunchKernel(func, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, params, 0));
    }
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH_v2(c, dc, bytes));
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += c[i];
    printf("vector_add: %d elements, %d launches, sum %.0f\n", n, launches, sum);
    return 0;
}
