// A Go target (cgo, so that it links libc and LD_PRELOAD applies): GOROUTINES goroutines each
// call add(i, 1) through a recursion 0 to 23 frames deep, for i < 50, on their own stacks,
// which start at 2 KiB and grow only from Go code. Prints "sum S" (every goroutine sums 1275).
// With `write`, each call at the bottom of the recursion also writes one byte to /dev/null (a
// system call from the goroutine's stack). With `wait`, it reads one byte from stdin first (so
// that `bpftime attach` can inject the agent into the running process).
// Usage: goroutines [GOROUTINES [write|wait]]
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

var devNull *os.File

//go:noinline
func deep(n, i int) int {
	if n == 0 {
		if devNull != nil {
			devNull.Write([]byte{'x'})
		}
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
	if len(os.Args) > 2 && os.Args[2] == "write" {
		devNull, _ = os.OpenFile("/dev/null", os.O_WRONLY, 0)
	}
	if len(os.Args) > 2 && os.Args[2] == "wait" {
		os.Stdin.Read(make([]byte, 1))
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
