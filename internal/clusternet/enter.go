package clusternet

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNamespace runs fn on a thread switched into the network namespace at
// path (a task's TaskNet.NetNS, say), then switches back. Sockets fn
// makes belong to that namespace, abstract unix sockets included. A
// thread that cannot switch back stays locked and ends with its
// goroutine, so no other code ever runs in the wrong namespace.
func InNamespace(path string, fn func() error) error {
	return onSwitchedThread(func() error {
		target, err := netns.GetFromPath(path)
		if err != nil {
			return fmt.Errorf("clusternet: netns %s: %w", path, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("clusternet: entering netns %s: %w", path, err)
		}
		return nil
	}, fn)
}

// onSwitchedThread runs fn on a locked OS thread that enter has switched
// into another network namespace, then switches the thread back to the
// one it had. When enter fails, fn does not run. When switching back
// fails, the thread stays locked and dies with its goroutine rather than
// serve other goroutines in the wrong namespace.
func onSwitchedThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("clusternet: current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			// enter failed before or at the switch: a failed setns or
			// unshare leaves the thread where it was.
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("clusternet: back to the original netns: %w", err)) // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
