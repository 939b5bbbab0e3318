// A kernel with module variables: a __constant__ factor the host sets before each launch and a
// __device__ count of launches the host reads at the end. A copy of the kernel loaded later
// with probes (an application attached to while running, `bpftime attach PID`) must see and
// update them as the original does.
__constant__ float scale;
__device__ unsigned int launched;

__global__ void scale_copy(const float *a, float *c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = __fadd_rn(c[i], __fmul_rn(a[i], scale)); // no fma: the PTX interpreter lacks it
    if (i == 0)
        atomicAdd(&launched, 1u);
}
