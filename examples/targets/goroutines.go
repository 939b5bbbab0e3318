// A Go target (cgo, so that it links libc and LD_PRELOAD applies): GOROUTINES goroutines each
// call add(i, 1) through a recursion 0 to 23 frames deep, for i < 50, on their own stacks,
// which start at 2 KiB and grow only from Go code. Prints "sum S" (every goroutine sums 1275).
// Usage: goroutines [GOROUTINES]
package main

// #include <stdlib.h>
import "C"

import (
	"fmt"
	"os"
	"strconv"
	"sync"
)

//go:noinline
func add(a, b int) int { return a + b }

//go:noinline
func deep(n, i int) int {
	if n == 0 {
		return add(i, 1)
	}
	var buf [40]byte
	buf[n%40] = byte(n)
	return deep(n-1, i) + int(buf[n%40]) - n
}

func main() {
	count := 2000
	if len(os.Args) > 1 {
		count, _ = strconv.Atoi(os.Args[1])
	}
	var wg sync.WaitGroup
	sums := make([]int, count)
	for g := 0; g < count; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				sums[g] += deep(g%24, i)
			}
		}(g)
	}
	wg.Wait()
	total := 0
	for _, s := range sums {
		total += s
	}
	fmt.Println("sum", total)
}
