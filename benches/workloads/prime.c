/* Number of primes below a limit, by trial division. */
#include "workload.h"

struct input {
    u64 limit;
};

WORKLOAD(count_primes)(struct input *in)
{
    u64 count = 0;
    for (u64 n = 2; n < in->limit; n++) {
        u64 is_prime = 1;
        for (u64 d = 2; d * d <= n; d++) {
            if (n % d == 0) {
                is_prime = 0;
                break;
            }
        }
        count += is_prime;
    }
    return count;
}
