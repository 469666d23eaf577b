package hooks

import (
	"fmt"
	"strings"
)

// Phase names a point in a migration where hooks run.
type Phase string

const (
	// PreSend runs before anything is read from the source.
	PreSend Phase = "pre-send"
	// PostSend runs once the shipment is complete at the destination.
	PostSend Phase = "post-send"
	// PreReceive runs before anything is written at the destination.
	PreReceive Phase = "pre-receive"
	// PostReceive runs after every file is verified, decrypted and renamed
	// into place: where a VM is defined and started.
	PostReceive Phase = "post-receive"
	// OnFailure runs when any other step failed, with the error in
	// COLDSHIP_ERROR.
	OnFailure Phase = "on-failure"
	// PreSwitchover runs at the sender in live mode, after the pre-copy
	// rounds and before the final one: where the source VM is paused or
	// shut down.
	PreSwitchover Phase = "pre-switchover"
)

// Phases lists every phase in the order a migration meets them.
var Phases = []Phase{PreSend, PostSend, PreReceive, PostReceive, PreSwitchover, OnFailure}

// ParsePhase returns the phase named s.
func ParsePhase(s string) (Phase, error) {
	for _, p := range Phases {
		if string(p) == s {
			return p, nil
		}
	}
	names := make([]string, len(Phases))
	for i, p := range Phases {
		names[i] = string(p)
	}
	return "", fmt.Errorf("unknown hook phase %q (want one of %s)", s, strings.Join(names, ", "))
}

// Hook is one --hook PHASE=COMMAND flag. Command runs with sh -c.
type Hook struct {
	Phase   Phase
	Command string
}

// ParseHook parses a --hook flag value, "PHASE=COMMAND".
func ParseHook(flag string) (Hook, error) {
	name, command, ok := strings.Cut(flag, "=")
	if !ok {
		return Hook{}, fmt.Errorf("hook %q: want PHASE=COMMAND", flag)
	}
	phase, err := ParsePhase(strings.TrimSpace(name))
	if err != nil {
		return Hook{}, fmt.Errorf("hook %q: %w", flag, err)
	}
	if strings.TrimSpace(command) == "" {
		return Hook{}, fmt.Errorf("hook %q: empty command", flag)
	}
	return Hook{Phase: phase, Command: command}, nil
}
