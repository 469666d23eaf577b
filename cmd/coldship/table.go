package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
)

// table prints rows for a person on a terminal (a header, aligned
// columns, IEC sizes) and for a script otherwise (tab-separated columns,
// sizes in bytes, no header). Either way a value can never break a
// column: see cell.
type table struct {
	w        io.Writer
	tw       *tabwriter.Writer // on a terminal
	terminal bool
}

func newTable(s *streams, header ...string) *table {
	t := &table{w: s.out, terminal: s.stdoutIsTerminal()}
	if t.terminal {
		t.tw = tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	}
	return t
}

// size formats a byte count for the table's reader.
func (t *table) size(n int64) string {
	if t.terminal {
		return humanBytes(n)
	}
	return strconv.FormatInt(n, 10)
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = cell(c)
	}
	line := strings.Join(cells, "\t") + "\n"
	if t.tw != nil {
		io.WriteString(t.tw, line)
		return
	}
	io.WriteString(t.w, line)
}

func (t *table) flush() error {
	if t.tw != nil {
		return t.tw.Flush()
	}
	return nil
}

// cell makes a value safe in a column: "-" for an empty one, and a
// double-quoted string with Go/JSON escapes for one that holds a space,
// tab, newline, quote, backslash or any other character that is not
// printable, so that columns split on tabs (or on spaces) never break.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	for _, r := range s {
		if r == ' ' || r == '"' || r == '\\' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
