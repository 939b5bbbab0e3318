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
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef FATBIN
#error "define FATBIN as the path of the fatbin to embed"
#endif

__asm__(".section .rodata\n.balign 16\n.globl vector_add_fatbin\nvector_add_fatbin:\n.incbin \"" FATBIN "\"\n.previous\n");
extern const unsigned char vector_add_fatbin[];

static const struct {
    int magic, version;
    const void *data;
    void *unused;
} wrapper = { 0x466243b1, 1, vector_add_fatbin, 0 };

typedef int CUresult;
typedef void *H;
typedef CUresult (*GetProc)(const char *, void **, int, uint64_t, int *);
typedef struct {
    unsigned grid[3], block[3], shared;
    H stream;
    void *attrs;
    unsigned nattrs;
} LaunchConfig;

static GetProc get_proc;

// Called before each launch (a place for a CPU uprobe: examples/bpf/cuda_launch_stamp.bpf.c).
volatile int last_launch;
__attribute__((noinline)) void launch_marker(int launch)
{
    last_launch = launch;
}

static void *need(const char *name, uint64_t flags)
{
    void *p = 0;
    int status = 0;
    if (get_proc(name, &p, 12000, flags, &status) != 0 || !p) {
        fprintf(stderr, "no %s in the driver\n", name);
        exit(2);
    }
    return p;
}

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
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "no CUDA driver: %s\n", dlerror());
        return 2;
    }
    GetProc first = (GetProc)dlsym(lib, "cuGetProcAddress_v2");
    if (!first) {
        fprintf(stderr, "the driver has no cuGetProcAddress_v2\n");
        return 2;
    }
    int status = 0;
    CHECK(first("cuGetProcAddress", (void **)&get_proc, 12000, 0, &status));

    CUresult (*init)(unsigned) = need("cuInit", 0);
    CUresult (*device_get)(int *, int) = need("cuDeviceGet", 0);
    CUresult (*retain)(H *, int) = need("cuDevicePrimaryCtxRetain", 0);
    CUresult (*set_current)(H) = need("cuCtxSetCurrent", 0);
    CUresult (*library_load)(H *, const void *, void *, void *, unsigned, void *, void *, unsigned) = need("cuLibraryLoadData", 0);
    CUresult (*get_kernel)(H *, H, const char *) = need("cuLibraryGetKernel", 0);
    CUresult (*kernel_function)(H *, H) = need("cuKernelGetFunction", 0);
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*htod)(uint64_t, const void *, size_t) = need("cuMemcpyHtoD", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*sync)(void) = need("cuCtxSynchronize", 0);
    typedef CUresult (*Launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);
    Launch launch = need("cuLaunchKernel", 0);
    Launch launch_ptsz = need("cuLaunchKernel", 2 /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */);
    CUresult (*launch_ex)(const LaunchConfig *, H, void **, void **) = need("cuLaunchKernelEx", 0);

    int dev;
    H ctx, library, kernel, func;
    CHECK(init(0));
    CHECK(device_get(&dev, 0));
    CHECK(retain(&ctx, dev));
    CHECK(set_current(ctx));
    CHECK(library_load(&library, &wrapper, 0, 0, 0, 0, 0, 0));
    CHECK(get_kernel(&kernel, library, "_Z10vector_addPKfS0_Pfi"));
    CHECK(kernel_function(&func, kernel));

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
