// Relocatable device code (linked_a.cu + linked_b.cu, `nvcc -rdc=true`) loaded through the
// driver API as the CUDA 13 runtime loads it: crt/link.stub's version 2 wrapper around the
// device-linked fatbin (machine code only), pointing at the units' fatbins (their PTX), given
// to cuLibraryLoadData. A driver whose GPU the linked machine code is not for JIT-links the
// units' PTX. Each launch runs fill (unit b), scale by 3 (unit a) and shift<5> (both units).
//
// Build: see linked_a.cu, then
//        cc -O2 -DLINKED='"linked.fatbin"' -DUNIT_A='"linked_a.fatbin"' -DUNIT_B='"linked_b.fatbin"' \
//           driver_linked.c -ldl -o driver_linked
// Run:   ./driver_linked [ELEMENTS] [LAUNCHES] [link]   (prints the sum of the result and the
//        blocks counted in the shared variable). With `link`, the application links the units'
//        fatbins itself (cuLinkCreate, cuLinkAddData, cuLinkComplete) and loads the cubin with
//        cuModuleLoadData, as JIT-compiling applications and libraries do; with `linkfile`, the
//        same with unit a given as a file (cuLinkAddFile of UNIT_A_FILE, default UNIT_A).
#include <stdint.h>
#include <string.h>

#if !defined(LINKED) || !defined(UNIT_A) || !defined(UNIT_B)
#error "define LINKED, UNIT_A and UNIT_B as the paths of the fatbins to embed"
#endif

#ifndef UNIT_A_FILE
#define UNIT_A_FILE UNIT_A
#endif

#define DRIVER_OWN_IMAGE
#include "driver_api.h"

EMBED(linked_fatbin, LINKED);
EMBED(unit_a_fatbin, UNIT_A);
EMBED(unit_b_fatbin, UNIT_B);

// What __cudaRegisterLinkedBinary fills in before registering the wrapper. nvcc links the device
// runtime in as a unit of its own when a kernel launches kernels (linked_b.cu's `parent`):
// -DUNIT_DEVRT names its fatbin (the __nv_relfatbin section of libcudadevrt.a's object).
#ifdef UNIT_DEVRT
EMBED(unit_devrt_fatbin, UNIT_DEVRT);
static const void *prelinked[] = { unit_a_fatbin, unit_b_fatbin, unit_devrt_fatbin, 0 };
#else
static const void *prelinked[] = { unit_a_fatbin, unit_b_fatbin, 0 };
#endif
static const Wrapper linked_wrapper = { 0x466243b1, 2, linked_fatbin, prelinked };

static const void *driver_image(void)
{
    return &linked_wrapper;
}

int main(int argc, char **argv)
{
    // Whole blocks of 256 (the kernels do not test the bounds).
    int n = ((argc > 1 ? atoi(argv[1]) : 1 << 16) + 255) / 256 * 256;
    int launches = argc > 2 ? atoi(argv[2]) : 3;
    open_driver();
    CUresult (*mem_alloc)(uint64_t *, size_t) = need("cuMemAlloc", 0);
    CUresult (*dtoh)(void *, uint64_t, size_t) = need("cuMemcpyDtoH", 0);
    CUresult (*sync)(void) = need("cuCtxSynchronize", 0);
    typedef CUresult (*Launch)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);
    Launch launch = need("cuLaunchKernel", 0);
    int by_file = argc > 3 && strcmp(argv[3], "linkfile") == 0;
    int own_link = by_file || (argc > 3 && strcmp(argv[3], "link") == 0);
    CUresult (*get_global)(uint64_t *, size_t *, H, const char *) = need(own_link ? "cuModuleGetGlobal" : "cuLibraryGetGlobal", 0);
    H code, fill, scale, shift;
    if (own_link) {
        CUresult (*link_create)(unsigned, int *, void **, H *) = need("cuLinkCreate", 0);
        CUresult (*link_add)(H, int, void *, size_t, const char *, unsigned, int *, void **) = need("cuLinkAddData", 0);
        CUresult (*link_complete)(H, void **, size_t *) = need("cuLinkComplete", 0);
        CUresult (*link_destroy)(H) = need("cuLinkDestroy", 0);
        CUresult (*module_load)(H *, const void *) = need("cuModuleLoadData", 0);
        CUresult (*get_function)(H *, H, const char *) = need("cuModuleGetFunction", 0);
        make_context();
        H state;
        void *cubin;
        size_t size;
        CHECK(link_create(0, 0, 0, &state));
        // CU_JIT_INPUT_FATBINARY
        if (by_file) {
            CUresult (*link_add_file)(H, int, const char *, unsigned, int *, void **) = need("cuLinkAddFile", 0);
            CHECK(link_add_file(state, 2, UNIT_A_FILE, 0, 0, 0));
        } else {
            CHECK(link_add(state, 2, (void *)unit_a_fatbin, 0, "linked_a", 0, 0, 0));
        }
        CHECK(link_add(state, 2, (void *)unit_b_fatbin, 0, "linked_b", 0, 0, 0));
#ifdef UNIT_DEVRT
        CHECK(link_add(state, 2, (void *)unit_devrt_fatbin, 0, "cuda_device_runtime", 0, 0, 0));
#endif
        CHECK(link_complete(state, &cubin, &size));
        CHECK(module_load(&code, cubin));
        CHECK(link_destroy(state));
        CHECK(get_function(&fill, code, "_Z4fillPi"));
        CHECK(get_function(&scale, code, "_Z5scalePii"));
        CHECK(get_function(&shift, code, "_Z5shiftILi5EEvPi"));
    } else {
        code = load_library();
        fill = kernel_function(code, "_Z4fillPi");
        scale = kernel_function(code, "_Z5scalePii");
        shift = kernel_function(code, "_Z5shiftILi5EEvPi");
    }

    uint64_t p;
    CHECK(mem_alloc(&p, (size_t)n * sizeof(int)));
    int factor = 3;
    void *one[] = { &p };
    void *two[] = { &p, &factor };
    unsigned blocks = (n + 255) / 256;
    for (int l = 0; l < launches; l++) {
        launch_marker(l);
        CHECK(launch(fill, blocks, 1, 1, 256, 1, 1, 0, 0, one, 0));
        CHECK(launch(scale, blocks, 1, 1, 256, 1, 1, 0, 0, two, 0));
        CHECK(launch(shift, blocks, 1, 1, 256, 1, 1, 0, 0, one, 0));
    }
    CHECK(sync());
    int *h = malloc((size_t)n * sizeof(int));
    CHECK(dtoh(h, p, (size_t)n * sizeof(int)));
    long long sum = 0;
    for (int i = 0; i < n; i++)
        sum += h[i];
    uint64_t seen_at;
    size_t seen_size;
    unsigned seen;
    CHECK(get_global(&seen_at, &seen_size, code, "blocks_seen"));
    CHECK(dtoh(&seen, seen_at, sizeof seen));
    printf("linked: %d elements, %d launches, sum %lld, blocks seen %u\n", n, launches, sum, seen);
    return 0;
}
