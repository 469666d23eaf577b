// Package atonce runs independent calls at once and reports their
// failures as a loop that made them one after the other would have: on a
// long link each call is round trips, and a loop pays them in series.
package atonce

import "sync"

// Each calls fn(i) for every i in [0, n), at most limit at a time, and
// returns the error of the lowest i that failed, or nil. Every call is
// made, whatever the others return; fn must be safe to call concurrently.
func Each(n, limit int, fn func(i int) error) error {
	errs := make([]error, n)
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
