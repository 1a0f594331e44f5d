// Command netprobe is what the isolation tests run inside tasks: it
// listens, dials and sends on the network and prints one line per
// attempt, so that a test can tell what a task could and could not reach.
//
//	netprobe listen PORT           TCP and UDP on PORT; prints "tcp-from A" and "udp-from A" per contact
//	netprobe tcp ADDR...           prints "tcp ADDR ok" or "tcp ADDR refused: ERR" for each
//	netprobe udp ADDR...           sends a datagram to each; prints "udp ADDR sent"
//	netprobe get URL               prints "get URL STATUS BODY" or "get URL error: ERR"
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: netprobe listen PORT | tcp ADDR... | udp ADDR... | get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "listen":
		listen(os.Args[2])
	case "tcp":
		for _, a := range os.Args[2:] {
			c, err := net.DialTimeout("tcp", a, 2*time.Second)
			if err != nil {
				fmt.Printf("tcp %s refused: %v\n", a, err)
				continue
			}
			fmt.Printf("tcp %s ok\n", a)
			c.Write([]byte("hello\n"))
			c.Close()
		}
	case "udp":
		for _, a := range os.Args[2:] {
			c, err := net.Dial("udp", a)
			if err != nil {
				fmt.Printf("udp %s refused: %v\n", a, err)
				continue
			}
			for i := 0; i < 3; i++ {
				c.Write([]byte("hello"))
			}
			c.Close()
			fmt.Printf("udp %s sent\n", a)
		}
	case "get":
		cl := &http.Client{Timeout: 5 * time.Second}
		resp, err := cl.Get(os.Args[2])
		if err != nil {
			fmt.Printf("get %s error: %v\n", os.Args[2], err)
			return
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		fmt.Printf("get %s %d %s\n", os.Args[2], resp.StatusCode, b)
	default:
		fmt.Fprintln(os.Stderr, "netprobe: unknown command", os.Args[1])
		os.Exit(2)
	}
}

func listen(port string) {
	if _, err := strconv.Atoi(port); err != nil {
		fmt.Fprintln(os.Stderr, "netprobe: bad port", port)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pc, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening")
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			fmt.Printf("udp-from %s\n", from)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Printf("tcp-from %s\n", c.RemoteAddr())
		c.Close()
	}
}
