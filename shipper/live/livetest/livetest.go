// Package livetest attacks the lanes of a live session in tests: a
// connection wrapper that rewrites the frames written through it, to
// tamper with, replay, drop, reorder or inject records as an attacker on
// the network path could.
package livetest

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"sync"
)

// Edit returns the frames to write in place of frame (header included),
// the i-th frame written on the connection, counting from 0.
type Edit func(i int, frame []byte) [][]byte

// Conn is a net.Conn whose writes go through Edit, frame by frame.
type Conn struct {
	net.Conn
	Edit Edit

	mu      sync.Mutex
	pending []byte
	n       int
}

// Wrap returns c with edit applied to the frames written to it.
func Wrap(c net.Conn, edit Edit) *Conn { return &Conn{Conn: c, Edit: edit} }

const headerSize = 5

func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, p...)
	for len(c.pending) >= headerSize {
		n := headerSize + int(binary.BigEndian.Uint32(c.pending[1:]))
		if len(c.pending) < n {
			break
		}
		frame := append([]byte(nil), c.pending[:n]...)
		c.pending = c.pending[n:]
		for _, out := range c.Edit(c.n, frame) {
			if _, err := c.Conn.Write(out); err != nil {
				return 0, err
			}
		}
		c.n++
	}
	return len(p), nil
}

// Kinds of frames, as the protocol numbers them.
const (
	Hello byte = 'H'
	Block byte = 'D'
)

// blockEdit applies f to the k-th block frame (from 0) and leaves the
// others alone. Each Edit keeps its own count: make one per connection.
func blockEdit(k int, f func(frame []byte) [][]byte) Edit {
	seen := 0
	return func(_ int, frame []byte) [][]byte {
		if frame[0] != Block {
			return [][]byte{frame}
		}
		seen++
		if seen-1 != k {
			return [][]byte{frame}
		}
		return f(frame)
	}
}

// Tamper flips a bit of the k-th block record's ciphertext.
func Tamper(k int) Edit {
	return blockEdit(k, func(frame []byte) [][]byte {
		frame[len(frame)-1] ^= 1
		return [][]byte{frame}
	})
}

// Replay sends the k-th block frame twice.
func Replay(k int) Edit {
	return blockEdit(k, func(frame []byte) [][]byte { return [][]byte{frame, frame} })
}

// Drop leaves out the k-th block frame.
func Drop(k int) Edit {
	return blockEdit(k, func([]byte) [][]byte { return nil })
}

// Inject puts a block frame of random ciphertext, for file 0 block 0,
// before the k-th block frame.
func Inject(k int) Edit {
	return blockEdit(k, func(frame []byte) [][]byte {
		fake := make([]byte, 256)
		rand.Read(fake)
		fake[0] = Block
		binary.BigEndian.PutUint32(fake[1:], uint32(len(fake)-headerSize))
		copy(fake[headerSize:], make([]byte, 13)) // file 0, block 0, not compressed
		return [][]byte{fake, frame}
	})
}

// Swap exchanges the k-th block frame with the frame after it.
func Swap(k int) Edit {
	seen := 0
	var held []byte
	return func(_ int, frame []byte) [][]byte {
		if held != nil {
			out := [][]byte{frame, held}
			held = nil
			return out
		}
		if frame[0] == Block {
			seen++
			if seen-1 == k {
				held = frame
				return nil
			}
		}
		return [][]byte{frame}
	}
}
