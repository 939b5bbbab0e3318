// The CUDA driver API reached as the CUDA 13 runtime reaches it: dlopen("libcuda.so.1"),
// dlsym("cuGetProcAddress_v2") once, every other entry point through it (cuGetProcAddress
// asked for itself first), device code from a __cudaFatBinaryWrapper around the fatbin
// embedded from FATBIN. For the driver_*.c harnesses.
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

// With DRIVER_WAIT_DIR set: says `said` on stderr, then waits (up to a minute) for a file
// named `name` there, so a test can act at that point.
static void wait_for_file(const char *name, const char *said)
{
    const char *dir = getenv("DRIVER_WAIT_DIR");
    if (!dir)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fprintf(stderr, "%s\n", said);
    for (int i = 0; i < 12000 && access(path, F_OK) != 0; i++)
        usleep(5000);
}

// Called before each launch (a place for a CPU uprobe: examples/bpf/cuda_launch_stamp.bpf.c).
// With DRIVER_WAIT_DIR set, launches after the first wait for a file named after them there
// (stderr says "before launch N" first), so a test can write maps between launches.
volatile int last_launch;
__attribute__((noinline)) void launch_marker(int launch)
{
    last_launch = launch;
    if (launch == 0)
        return;
    char name[32], said[64];
    snprintf(name, sizeof name, "%d", launch);
    snprintf(said, sizeof said, "before launch %d", launch);
    wait_for_file(name, said);
}

// Embeds the file at PATH (a string literal) as the 16-byte aligned array NAME.
#define EMBED(NAME, PATH)                                                                   \
    __asm__(".section .rodata\n.balign 16\n.globl " #NAME "\n" #NAME ":\n.incbin \"" PATH "\"\n.previous\n"); \
    extern const unsigned char NAME[]

// `__cudaFatBinaryWrapper`: version 1 wraps a fatbin; version 2 (crt/link.stub) wraps
// device-linked code and points at the NULL-terminated array of its units' fatbins.
typedef struct {
    int magic, version;
    const void *data;
    const void *filename_or_fatbins;
} Wrapper;

// The image load_library loads: the harness's own `driver_image()` when it defines
// DRIVER_OWN_IMAGE, else the fatbin FATBIN embedded behind a version 1 wrapper.
#ifdef DRIVER_OWN_IMAGE
static const void *driver_image(void);
#else
#ifndef FATBIN
#error "define FATBIN as the path of the fatbin to embed"
#endif
EMBED(embedded_fatbin, FATBIN);
static const Wrapper wrapper = { 0x466243b1, 1, embedded_fatbin, 0 };
static const void *driver_image(void)
{
    return &wrapper;
}
#endif

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

/// Opens the driver and finds cuGetProcAddress (exits with 2 when there is no driver).
static void open_driver(void)
{
    // With DRIVER_WAIT_OPEN too, the driver is opened once a file `open` is there.
    if (getenv("DRIVER_WAIT_OPEN"))
        wait_for_file("open", "before opening the driver");
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "no CUDA driver: %s\n", dlerror());
        exit(2);
    }
    GetProc first = (GetProc)dlsym(lib, "cuGetProcAddress_v2");
    if (!first) {
        fprintf(stderr, "the driver has no cuGetProcAddress_v2\n");
        exit(2);
    }
    int status = 0;
    CHECK(first("cuGetProcAddress", (void **)&get_proc, 12000, 0, &status));
}

/// Initialises the driver and makes the primary context of device 0 current.
static void make_context(void)
{
    CUresult (*init)(unsigned) = need("cuInit", 0);
    CUresult (*device_get)(int *, int) = need("cuDeviceGet", 0);
    CUresult (*retain)(H *, int) = need("cuDevicePrimaryCtxRetain", 0);
    CUresult (*set_current)(H) = need("cuCtxSetCurrent", 0);
    int dev;
    H ctx;
    CHECK(init(0));
    CHECK(device_get(&dev, 0));
    CHECK(retain(&ctx, dev));
    CHECK(set_current(ctx));
}

/// make_context, then loads the embedded image as a library (lazily, as the runtime does);
/// returns the library.
static H load_library(void)
{
    CUresult (*library_load)(H *, const void *, void *, void *, unsigned, void *, void *, unsigned) = need("cuLibraryLoadData", 0);
    H library;
    make_context();
    CHECK(library_load(&library, driver_image(), 0, 0, 0, 0, 0, 0));
    return library;
}

/// The function of kernel `name` (mangled) in `library`.
static H kernel_function(H library, const char *name)
{
    CUresult (*get_kernel)(H *, H, const char *) = need("cuLibraryGetKernel", 0);
    CUresult (*function)(H *, H) = need("cuKernelGetFunction", 0);
    H kernel, func;
    CHECK(get_kernel(&kernel, library, name));
    CHECK(function(&func, kernel));
    return func;
}
