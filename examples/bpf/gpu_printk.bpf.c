// bpf_trace_printk on the GPU prints what it prints on the CPU: signed and unsigned numbers in
// several widths and bases, padding, characters, and a string in global data (a `%s` pointing
// into the GPU's map arena). `gpu/puts` is bpftime's puts (helper 501, GPU only).
// Run with `bpftime vm run [--engine ptx|gpu] gpu_printk.bpf.o --section printk --mem <8 bytes>`.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static const void (*bpftime_puts)(const char *) = (void *)501;

char name[16] = "gpu-printk";

SEC("gpu/printk")
int printk(__u64 *input)
{
    __u64 v = *input;
    bpf_printk("%d %u %x", -5, 7, 255);
    bpf_printk("%lld %llx |%5d|", -(1ll << 40), v, 42);
    bpf_printk("|%-4d| %c%c", (int)v, 'o', 'k');
    bpf_printk("name %s", name);
    return 0;
}

SEC("gpu/puts")
int puts(void *ctx)
{
    bpftime_puts("plain string, no format: %d");
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
