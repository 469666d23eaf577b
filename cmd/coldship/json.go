package main

import (
	"encoding/json"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"
)

// With --json every command writes newline-delimited JSON objects to
// stdout and nothing else there. jsonSchema below is the one description
// of those objects: the README's tables are checked against it, and so is
// every object the tests see.

// errorObject is written on stdout when a command fails under --json.
type errorObject struct {
	Type     string `json:"type"`
	Error    string `json:"error"`
	ExitCode int    `json:"exit_code"`
	Category string `json:"category"`
}

var stdoutMu sync.Mutex

// writeJSON writes v as one line. Lines from several goroutines (progress,
// notices) never interleave.
func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	_, err = w.Write(append(b, '\n'))
	return err
}

// jsonRequested reports whether the failed command line asked for JSON:
// the command's --json flag once parsed, else --json among the arguments
// (a command line that failed to parse), else COLDSHIP_JSON.
func jsonRequested(cmd *cobra.Command, args []string) bool {
	if cmd != nil {
		if f := cmd.Flags().Lookup("json"); f != nil && f.Changed {
			return f.Value.String() == "true"
		}
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--json="); ok {
			b, err := strconv.ParseBool(v)
			return err == nil && b
		}
		if a == "--json" {
			return true
		}
	}
	b, err := strconv.ParseBool(os.Getenv(envPrefix + "JSON"))
	return err == nil && b
}

// jsonField documents one field of a JSON object. A type ending in "?"
// marks a field that is present only when it applies.
type jsonField struct {
	Name, Type, Meaning string
}

// jsonKind is one kind of object: by its "type" (and "op" for summaries),
// or, for the per-shipment lines of list and prune, by name alone.
type jsonKind struct {
	Name   string // as the README's heading names it
	Type   string // the "type" field; "" for objects without one
	Op     string // the "op" field of summaries
	Mode   string // the "mode" field, where it tells apart summaries of one op
	Fields []jsonField
}

var (
	fType     = jsonField{"type", "string", "the kind of object"}
	fOp       = jsonField{"op", "string", "the command: send, receive, verify, prune, keygen, show, man"}
	fDuration = jsonField{"duration_s", "number", "seconds since the command started"}
	fShipment = jsonField{"shipment", "string", "the shipment id"}
	fFiles    = jsonField{"files", "integer", "files and directories in the shipment"}
	fTotal    = jsonField{"bytes_total", "integer", "logical size of all files (holes included)"}
	fPaths    = jsonField{"paths", "array", "the restored paths, absolute (what stdout prints without --json)"}
	// What the transport measured of its link (send, receive and verify).
	fLink = []jsonField{
		{"throughput_bps", "integer?", "bytes moved to or from the destination per second, over the whole command"},
		{"rtt_ms", "number?", "round trip to the destination in milliseconds, measured at connect time (SFTP, S3)"},
		{"connections", "integer?", "network connections used (SSH connections; HTTP connections for S3)"},
		{"channels", "integer?", "streams carried over them (SFTP channels, parallel S3 requests)"},
	}
)

// withLink appends the link fields to a summary's fields.
func withLink(fields []jsonField) []jsonField { return append(fields, fLink...) }

// jsonSchema lists every object coldship prints with --json.
var jsonSchema = []jsonKind{
	{Name: "progress", Type: "progress", Fields: []jsonField{
		fType, {"op", "string", "send, receive or verify"}, fTotal,
		{"bytes_done", "integer", "logical bytes processed (holes and zero blocks count as soon as they are found)"},
		{"bytes_read", "integer", "bytes read from source files (send) or existing files (receive --into)"},
		{"bytes_shipped", "integer", "bytes put to or fetched from the destination: what --bwlimit limits"},
		{"bytes_per_s", "number", "bytes read or shipped per second, over the last seconds (holes skipped never count)"},
		{"eta_s", "number?", "estimated seconds left, once there is a rate to estimate from; absent once every byte is read while the last records are still being put"},
		fDuration,
	}},
	{Name: "notice", Type: "notice", Fields: []jsonField{
		fType, {"message", "string", "a notice for a person: a retry, a resume, a connection dialled again, a host key recorded, a fallback to a full shipment, a remote's line"},
	}},
	{Name: "error", Type: "error", Fields: []jsonField{
		fType, {"error", "string", "what failed, as on stderr"},
		{"exit_code", "integer", "the exit status (see Exit status)"},
		{"category", "string", "usage, hook, auth, integrity, busy, interrupted or other"},
	}},
	{Name: "summary of send", Type: "summary", Op: "send", Mode: "stored", Fields: withLink([]jsonField{
		fType, fOp, {"mode", "string", "stored"}, fShipment, fFiles, fTotal,
		{"bytes_read", "integer", "bytes read from the sources (holes are never read)"},
		{"bytes_hole", "integer", "bytes in holes, never read"},
		{"bytes_zero", "integer", "bytes read and found zero, in whole 4 KiB pages, not shipped"},
		{"bytes_data", "integer", "bytes in the non-zero pages of the blocks the shipment holds records of, before compression"},
		{"bytes_unchanged", "integer", "bytes in the non-zero pages of blocks unchanged since the base, not shipped (bytes_total = bytes_hole + bytes_zero + bytes_data + bytes_unchanged)"},
		{"bytes_skipped", "integer", "bytes not shipped: bytes_hole + bytes_zero + bytes_unchanged"},
		{"bytes_shipped", "integer", "bytes put to the destination by this run"},
		{"segments", "integer", "segment objects put by this run"},
		{"bytes_reused", "integer", "bytes of segments of an interrupted run that this run checked and kept"},
		{"segments_reused", "integer", "segments of an interrupted run that this run checked and kept"},
		{"incremental", "boolean", "true when blocks of a base are used"},
		{"base", "string?", "the base shipment (incremental)"},
		{"full_reason", "string?", "why an incremental send had to be a full one"},
		fDuration,
	})},
	{Name: "summary of send --live", Type: "summary", Op: "send", Mode: "live", Fields: []jsonField{
		fType, fOp, {"mode", "string", "live"}, fShipment, fFiles, fTotal,
		{"bytes_hole", "integer", "bytes in holes in the final round, skipped"},
		{"bytes_zero", "integer", "bytes found all-zero in the final round, not sent"},
		{"bytes_data", "integer", "plaintext bytes of the blocks sent, all rounds"},
		{"bytes_shipped", "integer", "bytes sent on the wire, all rounds"},
		{"rounds", "array", "one object per round: round, final, blocks, bytes_data, bytes_shipped, bytes_read, duration_s"},
		{"switchover_s", "number", "seconds from the pre-switchover hook's start to the files in place"},
		{"pre_switchover_hook_s", "number", "the hook's share of it (0 without a pre-switchover hook)"},
		{"paths", "array", "the restored paths at the destination"},
		{"data", "string", "the data path: ssh (lanes over SSH channels) or tcp (direct TCP lanes)"},
		{"lanes", "integer", "lanes that carried the blocks (0: the one control channel)"},
		fDuration,
	}},
	{Name: "summary of receive", Type: "summary", Op: "receive", Fields: withLink([]jsonField{
		fType, fOp, fShipment,
		{"label", "string", "the shipment's label (send --name), \"\" if none"},
		fFiles, fTotal,
		{"bytes_data", "integer", "plaintext bytes of the blocks written, whole blocks (their zero pages stay holes)"},
		{"bytes_fetched", "integer", "bytes of segments read from the destination by this run (not the small objects: header, keys, manifest, table)"},
		{"bytes_reused", "integer", "bytes an interrupted receive had written, checked and kept instead of fetched"},
		{"bytes_read", "integer?", "receive --into: bytes of existing files read back and hashed"},
		{"bytes_written", "integer?", "receive --into: bytes written"},
		{"mode", "string", "out (a new restore) or into (an earlier restore updated in place)"},
		fPaths, fDuration,
	})},
	{Name: "summary of verify", Type: "summary", Op: "verify", Fields: withLink([]jsonField{
		fType, fOp,
		{"shipment", "string?", "the shipment checked (not with --all)"},
		{"mode", "string", "inventory (no key), full (every block opened) or all (verify --all)"},
		{"shipments", "integer?", "--all: shipments checked"},
		{"problems", "integer?", "--all: problems found (each also printed as a problem object)"},
		{"files", "integer?", "full: files checked"},
		{"bytes_total", "integer?", "full: logical size of all files"},
		{"bytes_checked", "integer?", "inventory, all: bytes of objects read and hashed"},
		fDuration,
	})},
	{Name: "problem (verify --all)", Type: "problem", Fields: []jsonField{
		fType,
		{"shipment", "string?", "the shipment concerned, when there is one"},
		{"object", "string?", "the object concerned, relative to DEST"},
		{"problem", "string", "what is wrong"},
	}},
	{Name: "summary of prune", Type: "summary", Op: "prune", Fields: []jsonField{
		fType, fOp,
		{"dry_run", "boolean", "true when nothing was deleted (--dry-run)"},
		{"shipments", "integer", "shipments at DEST"},
		{"deleted", "integer", "shipments deleted (or that would be)"},
		{"ignored", "integer", "shipments left alone and counted for no rule (each has ignored)"},
		{"bytes_freed", "integer", "bytes of the shipments deleted"},
		fDuration,
	}},
	{Name: "summary of keygen", Type: "summary", Op: "keygen", Fields: []jsonField{
		fType, fOp, {"recipient", "string", "the age1... recipient to give to senders"},
		{"file", "string?", "the identity file written (-o)"},
		{"identity", "string?", "without -o: the secret identity itself"},
		fDuration,
	}},
	{Name: "summary of man", Type: "summary", Op: "man", Fields: []jsonField{
		fType, fOp, {"dir", "string", "the directory the pages were written to"},
		{"pages", "array", "the file names of the pages written"}, fDuration,
	}},
	{Name: "shipment (show)", Type: "shipment", Fields: []jsonField{
		fType, {"id", "string", "the shipment id"},
		{"created", "string", "creation time, RFC 3339"},
		{"label", "string", "the label (--name), \"\" if none"},
		{"block_size", "integer", "bytes per block"},
		{"base", "string?", "the shipment it was compared with (incremental)"},
		{"bases", "array", "ids of every shipment whose blocks it uses (the chain to keep)"},
		fFiles, fTotal,
		{"bytes_data", "integer", "bytes of data in all files (holes and zero blocks excluded)"},
		{"signer", "string?", "with --trusted-senders: the principal of the trusted key that signed it"},
	}},
	{Name: "file (show)", Type: "file", Fields: []jsonField{
		fType, {"path", "string", "slash-separated, relative to the restore directory"},
		{"file_type", "string", "file or dir"},
		{"size", "integer", "logical size in bytes"},
		{"bytes_data", "integer", "bytes of data: the file's allocated data, holes and zero blocks excluded"},
		{"mode", "string", "permission bits, octal"},
		{"mtime", "string", "modification time, RFC 3339"},
		{"owner", "string", "numeric uid:gid at the source, \"-\" for shipments of formats 1 and 2, which do not record it"},
		{"blake3", "string", "whole-file digest, hex (\"\" for a directory)"},
		{"backing", "string?", "an overlay image's backing file: its path in the shipment, restored beside it"},
		{"backing_format", "string?", "with backing: the backing file's format (qcow2, raw or vmdk)"},
		{"data_files", "array?", "a vmdk descriptor's extent files: their paths in the shipment, which hold its data"},
	}},
	{Name: "version", Type: "version", Fields: []jsonField{
		fType, {"version", "string", "coldship's version (git describe)"},
		{"go", "string", "the Go version it was built with"},
		{"commit", "string", "the commit it was built from, \"\" if unknown"},
		{"modified", "boolean", "true when built from a tree with uncommitted changes"},
		{"dependencies", "array", "the modules built in: objects with path and version"},
	}},
	{Name: "shipment (list)", Fields: []jsonField{
		{"id", "string", "the shipment id (sorts by creation time)"},
		{"created", "string", "creation time, RFC 3339"},
		{"label", "string", "the label (--name), \"\" if none"},
		{"bytes", "integer", "bytes stored at DEST"},
		{"complete", "boolean", "false for a send that failed, was interrupted or is running"},
		{"base", "string?", "an incremental shipment's base"},
		{"error", "string?", "why its header could not be read"},
		{"signer", "string?", "with --trusted-senders: the principal of the trusted key that signed it"},
		{"trust", "string?", "with --trusted-senders, of a complete shipment: trusted, unsigned, untrusted (a key the file does not trust), bad signature, or tampered (its objects are not those it signed)"},
		{"chain", "string?", "a signed shipment's chain (its sources to this destination); with --trusted-senders only once its signature checked out, without it as its statement says, unchecked"},
		{"previous", "string?", "the shipment signed before it in its chain (absent for the first one); checked as chain is"},
	}},
	{Name: "decision (prune)", Fields: []jsonField{
		{"id", "string", "the shipment id"},
		{"created", "string", "creation time, RFC 3339"},
		{"complete", "boolean", "whether the shipment is complete"},
		{"bytes", "integer", "bytes stored at DEST"},
		{"label", "string", "its series: the label (send --name), \"\" if none (or its header is missing); prune applies its rules to each label's shipments apart"},
		{"delete", "boolean", "true if prune deletes it (or would, with --dry-run)"},
		{"reasons", "array", "every rule that keeps it (\"last 1\", \"daily 2026-11-21\", \"within 7d\", \"base of ID\"...), or why it is deleted"},
		{"ignored", "string?", "why it is left alone and counted for no rule: its header is missing or damaged, it is dated more than 24 h ahead, or it is not from a trusted sender (--trusted-senders)"},
	}},
}
