// The vector add of vector_add.cu loaded with the JIT options a program sets to read the
// driver's JIT logs (cuModuleLoadDataEx, then cuLibraryLoadData): an info log and an error log,
// each with a buffer and its size, which the driver sets to the bytes it wrote. Prints the
// result of each load, both logs and both sizes as the driver left them, then the sum of one
// launch of each module's kernel.
// Build: nvcc --fatbin -o vector_add.fatbin vector_add.cu
//        cc -O2 -DFATBIN='"vector_add.fatbin"' driver_jit_log.c -ldl -o driver_jit_log
// Run:   ./driver_jit_log [ELEMENTS]
#include "driver_api.h"
#include <string.h>

enum { INFO_LOG_BUFFER = 3, INFO_LOG_BUFFER_SIZE_BYTES = 4, ERROR_LOG_BUFFER = 5, ERROR_LOG_BUFFER_SIZE_BYTES = 6 };

static char info[512], error[512];
static int options[] = { INFO_LOG_BUFFER, INFO_LOG_BUFFER_SIZE_BYTES, ERROR_LOG_BUFFER, ERROR_LOG_BUFFER_SIZE_BYTES };
static void *values[4];

// Fresh buffers (filled with a mark, as a program's own buffers hold something) and sizes.
static void set_options(void)
{
    memset(info, 'i', sizeof info - 1);
    memset(error, 'e', sizeof error - 1);
    info[sizeof info - 1] = error[sizeof error - 1] = 0;
    values[0] = info;
    values[1] = (void *)(uintptr_t)sizeof info;
    values[2] = error;
    values[3] = (void *)(uintptr_t)sizeof error;
}

static void report(const char *how, CUresult r)
{
    printf("%s: result %d, info log %zu bytes \"%s\", error log %zu bytes \"%.40s\"\n", how, r, (size_t)(uintptr_t)values[1], info,
           (size_t)(uintptr_t)values[3], error);
}

static double run(H func, int n)
{
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*htod)(uint64_t, const void *, size_t) = need("cuMemcpyHtoD", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **) = need("cuLaunchKernel", 0);
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *c = malloc(bytes);
    for (int i = 0; i < n; i++)
        a[i] = i;
    uint64_t da, dc;
    CHECK(mem_alloc(&da, bytes));
    CHECK(mem_alloc(&dc, bytes));
    CHECK(htod(da, a, bytes));
    void *params[] = { &da, &da, &dc, &n };
    CHECK(launch(func, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, params, 0));
    CHECK(dtoh(c, dc, bytes));
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += c[i];
    free(a);
    free(c);
    return sum;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
    open_driver();
    make_context();
    CUresult (*load_ex)(H *, const void *, unsigned, int *, void **) = need("cuModuleLoadDataEx", 0);
    CUresult (*module_function)(H *, H, const char *) = need("cuModuleGetFunction", 0);
    CUresult (*library_load)(H *, const void *, int *, void **, unsigned, void *, void *, unsigned) = need("cuLibraryLoadData", 0);
    H module, library, func;

    set_options();
    CUresult r = load_ex(&module, driver_image(), 4, options, values);
    report("cuModuleLoadDataEx", r);
    if (r != 0)
        return 1;
    CHECK(module_function(&func, module, "_Z10vector_addPKfS0_Pfi"));
    printf("module: sum %.0f\n", run(func, n));

    set_options();
    r = library_load(&library, driver_image(), options, values, 4, 0, 0, 0);
    report("cuLibraryLoadData", r);
    if (r != 0)
        return 1;
    printf("library: sum %.0f\n", run(kernel_function(library, "_Z10vector_addPKfS0_Pfi"), n));
    return 0;
}
