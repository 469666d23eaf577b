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

// A field is one value of a row: text that comes from a shipment, its
// files or its signer (an id, a label, a path, a principal), which may
// hold anything, or a value coldship formats itself (a size, a time, a
// state), whose blanks are its own.
type field struct {
	s   string
	own bool
}

// text is a value that comes from a shipment, its files or its signer.
func text(s string) field { return field{s: s} }

// own is a value coldship formats itself.
func own(s string) field { return field{s: s, own: true} }

func newTable(s *streams, header ...string) *table {
	t := &table{w: s.out, terminal: s.stdoutIsTerminal()}
	if t.terminal {
		t.tw = tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	}
	return t
}

// size formats a byte count for the table's reader.
func (t *table) size(n int64) field {
	if t.terminal {
		return own(humanBytes(n))
	}
	return own(strconv.FormatInt(n, 10))
}

// row prints a row. Every value goes through cell but, on a terminal, one
// that coldship formatted itself (6.8 KiB, bad signature): it never holds
// a tab or newline, and the reader knows its form, so quotes would only be
// noise; a label or path can hold anything, and is quoted when it needs.
func (t *table) row(fields ...field) {
	cells := make([]string, len(fields))
	for i, f := range fields {
		switch {
		case f.s == "":
			cells[i] = "-"
		case f.own && t.terminal:
			cells[i] = f.s
		default:
			cells[i] = cell(f.s)
		}
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
