// Loads an object with libbpf (maps created, prog arrays filled from `.values`, programs
// loaded), then closes it and exits: what the loader made must go with it.
// Usage: load_only OBJ   (prints "load R", libbpf's result)
#include <bpf/libbpf.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (!obj)
        return 1;
    printf("load %d\n", bpf_object__load(obj));
    bpf_object__close(obj);
    return 0;
}
