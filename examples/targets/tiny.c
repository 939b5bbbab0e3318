// Functions of 1 to 4 bytes laid end to end, with no padding between them: no 5-byte jump fits
// in any of them, so probes there are int3 traps (as every kernel uprobe is).
//   t_ret1  (1 byte)  ret
//   t_jmp2  (2 bytes) jmp t_add4 (a tail call: returns a + b)
//   t_zero3 (3 bytes) xor eax, eax; ret
//   t_add4  (4 bytes) lea eax, [rdi + rsi]; ret
//   t_sub5  (5 bytes) mov eax, edi; sub eax, esi; ret   (room for a jump, over t_add4's heels)
// Usage: tiny ITERS [masked]   (prints "ret1 N jmp2 S1 zero3 0 add4 S2 sub5 S3"; with `masked`
// the calls are made in a signal handler installed with every signal in its mask: an int3
// met there with SIGTRAP blocked would have the kernel kill the process)
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__asm__(".text\n"
        ".globl t_ret1\n.type t_ret1, @function\nt_ret1:\n\tret\n.size t_ret1, . - t_ret1\n"
        ".globl t_jmp2\n.type t_jmp2, @function\nt_jmp2:\n\tjmp .Lt_add4\n.size t_jmp2, . - t_jmp2\n"
        ".globl t_zero3\n.type t_zero3, @function\nt_zero3:\n\txorl %eax, %eax\n\tret\n.size t_zero3, . - t_zero3\n"
        ".globl t_add4\n.type t_add4, @function\nt_add4:\n.Lt_add4:\n\tleal (%rdi,%rsi), %eax\n\tret\n.size t_add4, . - t_add4\n"
        ".globl t_sub5\n.type t_sub5, @function\nt_sub5:\n\tmovl %edi, %eax\n\tsubl %esi, %eax\n\tret\n.size t_sub5, . - t_sub5\n"
        ".globl t_end\n.type t_end, @function\nt_end:\n\tret\n.size t_end, . - t_end\n");

void t_ret1(void);
int t_jmp2(int a, int b);
int t_zero3(void);
int t_add4(int a, int b);
int t_sub5(int a, int b);

static long iters, ret1, jmp2, zero3, add4, sub5;

static void calls(int sig)
{
    (void)sig;
    for (long i = 0; i < iters; i++) {
        t_ret1();
        ret1++;
        jmp2 += t_jmp2((int)i, 1);
        zero3 += t_zero3();
        add4 += t_add4((int)i, 2);
        sub5 += t_sub5((int)i + 3, 1);
    }
}

int main(int argc, char **argv)
{
    iters = argc > 1 ? atol(argv[1]) : 1000;
    if (argc > 2 && strcmp(argv[2], "masked") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = calls;
        sigfillset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        raise(SIGUSR1);
    } else {
        calls(0);
    }
    printf("ret1 %ld jmp2 %ld zero3 %ld add4 %ld sub5 %ld\n", ret1, jmp2, zero3, add4, sub5);
    return 0;
}
