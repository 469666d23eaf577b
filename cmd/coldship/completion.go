package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/shipper"
)

// destSchemes are offered where a DEST is typed; a path completes as a
// directory.
var destSchemes = []string{"s3://", "sftp://", "file:///"}

// addCompletions gives the shell values to complete: destination schemes
// for DEST and --to, shipment ids after a DEST, phase names for hooks.
func addCompletions(root *cobra.Command) {
	// cobra adds its completion command as it runs; made now, it can end
	// its help with examples as every other command does.
	root.InitDefaultCompletionCmd()
	if c, _, err := root.Find([]string{"completion"}); err == nil && c != root {
		c.Example = `  coldship completion bash > /etc/bash_completion.d/coldship
  coldship completion zsh > "${fpath[1]}/_coldship"
  coldship completion fish > ~/.config/fish/completions/coldship.fish`
	}
	for _, c := range root.Commands() {
		switch c.Name() {
		case "receive", "verify", "show":
			c.ValidArgsFunction = completeDestThenShipment
		case "list", "prune":
			c.ValidArgsFunction = func(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if len(args) > 0 {
					return nil, cobra.ShellCompDirectiveNoFileComp
				}
				return completeDest(toComplete, destSchemes)
			}
		}
		f := c.Flags()
		if f.Lookup("to") != nil {
			c.RegisterFlagCompletionFunc("to", func(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				return completeDest(toComplete, append([]string{"ssh://"}, destSchemes...))
			})
		}
		if f.Lookup("hook") != nil {
			c.RegisterFlagCompletionFunc("hook", completePhases(hooks.Phases))
		}
		if f.Lookup("remote-hook") != nil {
			c.RegisterFlagCompletionFunc("remote-hook", completePhases([]hooks.Phase{hooks.PreReceive, hooks.PostReceive, hooks.OnFailure}))
		}
		for flag, values := range map[string][]string{"compress": {"zstd", "none"}, "data": {"ssh", "tcp"}, "base": {"latest", "none"}} {
			if f.Lookup(flag) != nil {
				c.RegisterFlagCompletionFunc(flag, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
			}
		}
	}
}

// completeDest offers the schemes that match what is typed, or else lets
// the shell complete a directory.
func completeDest(toComplete string, schemes []string) ([]string, cobra.ShellCompDirective) {
	if strings.Contains(toComplete, "://") || strings.HasPrefix(toComplete, "/") || strings.HasPrefix(toComplete, ".") {
		return nil, cobra.ShellCompDirectiveFilterDirs
	}
	var out []string
	for _, s := range schemes {
		if strings.HasPrefix(s, toComplete) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, cobra.ShellCompDirectiveFilterDirs
	}
	return out, cobra.ShellCompDirectiveNoSpace
}

func completePhases(phases []hooks.Phase) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		var out []string
		for _, p := range phases {
			out = append(out, string(p)+"=")
		}
		return out, cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
	}
}

// completeDestThenShipment completes DEST, then the ids of the shipments
// there (asking the destination, with the flags and environment given).
func completeDestThenShipment(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	switch len(args) {
	case 0:
		return completeDest(toComplete, destSchemes)
	case 1:
	default:
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	if applyEnv(c) != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var o transportOptions
	readTransportFlags(c, &o)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &streams{in: strings.NewReader(""), out: c.OutOrStdout(), err: c.ErrOrStderr()}
	tr, err := openDest(ctx, s, args[0], &o)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer tr.Close()
	ships, err := shipper.List(ctx, tr)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for i := len(ships) - 1; i >= 0; i-- { // newest first
		si := ships[i]
		if !strings.HasPrefix(si.ID, toComplete) {
			continue
		}
		desc := si.Created.Local().Format("2006-01-02 15:04")
		if si.Label != "" {
			desc += " " + si.Label
		}
		if !si.Complete {
			desc += " (incomplete)"
		}
		out = append(out, si.ID+"\t"+desc)
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
}
