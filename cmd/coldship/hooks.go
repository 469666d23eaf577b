package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/hooks"
)

// hookOptions are the flags shared by send and receive for hooks.
type hookOptions struct {
	hooks   []string
	dir     string
	timeout time.Duration
}

func addHookFlags(f *pflag.FlagSet, o *hookOptions) {
	f.StringArrayVar(&o.hooks, "hook", nil, "run `PHASE=COMMAND` (sh -c) at a phase: pre-send, post-send, pre-receive, post-receive, pre-switchover (send --live), on-failure (repeatable)")
	f.StringVar(&o.dir, "hooks-dir", "", "run the executables `DIR`/PHASE and DIR/PHASE.d/* at each phase")
	f.DurationVar(&o.timeout, "hook-timeout", hooks.DefaultTimeout, "kill a hook that runs longer than this")
}

func (o *hookOptions) runner(s *streams) (*hooks.Runner, error) {
	r := &hooks.Runner{Dir: o.dir, Timeout: o.timeout, Stderr: s.err}
	for _, h := range o.hooks {
		hk, err := hooks.ParseHook(h)
		if err != nil {
			return nil, usageError{fmt.Errorf("--hook %s: %w", h, err)}
		}
		r.Hooks = append(r.Hooks, hk)
	}
	if o.timeout <= 0 {
		return nil, usagef("--hook-timeout %s: give a positive duration such as 30m", o.timeout)
	}
	return r, nil
}

// hookErr is returned for a failed hook, so that main exits 3.
func hookErr(err error) error {
	if errors.Is(err, hooks.ErrHook) && !errors.Is(err, errHook) {
		return fmt.Errorf("%w: %w", errHook, err)
	}
	return err
}

// onFailure runs the on-failure hooks for err and returns err (or the
// interruption) unchanged; a failing on-failure hook is reported, not
// allowed to hide the original error.
func onFailure(ctx context.Context, s *streams, r *hooks.Runner, env hooks.Env, err error) error {
	if r == nil || !r.Has(hooks.OnFailure) {
		return err
	}
	env.Error = err.Error()
	// The on-failure hooks run even when the failure is an interruption.
	hctx := context.WithoutCancel(ctx)
	if herr := r.Run(hctx, hooks.OnFailure, env); herr != nil {
		fmt.Fprintf(s.err, "coldship: %v\n", herr)
	}
	return err
}

// libvirtSidecar is shipped next to a domain's disks and XML: it tells the
// receiver which original disk path each shipped file replaces.
const libvirtSidecar = "coldship-libvirt.json"

type libvirtInfo struct {
	Domain string            `json:"domain"`
	XML    string            `json:"xml"`   // shipped name of the definition
	Disks  map[string]string `json:"disks"` // original path -> shipped name
}

// libvirtSources shuts the domain off if asked, checks it is shut off, and
// stages its definition and the sidecar in a temporary directory; it
// returns the paths to ship as one VM directory and a cleanup function.
func libvirtSources(ctx context.Context, s *streams, lv *hooks.Libvirt, name string, shutdown bool, wait time.Duration) ([]archive.Source, func(), error) {
	state, err := lv.State(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if state != hooks.StateShutOff {
		if !shutdown {
			return nil, nil, fmt.Errorf("libvirt domain %s is %s: shut it down first, or pass --shutdown", name, state)
		}
		fmt.Fprintf(s.err, "coldship: shutting down libvirt domain %s\n", name)
		if err := lv.Shutdown(ctx, name, wait); err != nil {
			return nil, nil, err
		}
	}
	dom, err := lv.Domain(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	stage, err := os.MkdirTemp("", "coldship-libvirt-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(stage) }
	info := libvirtInfo{Domain: dom.Name, XML: dom.Name + ".xml", Disks: map[string]string{}}
	var srcs []archive.Source
	used := map[string]bool{info.XML: true, libvirtSidecar: true}
	addFile := func(p, shipped string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("libvirt domain %s: %w", name, err)
		}
		srcs = append(srcs, archive.Source{Path: p, Name: path.Join(dom.Name, shipped), Info: fi})
		return nil
	}
	disks := append([]string(nil), dom.NVRAM)
	for _, d := range dom.Disks {
		disks = append(disks, d.Source)
	}
	for i, p := range disks {
		if p == "" || info.Disks[p] != "" {
			continue
		}
		shipped := filepath.Base(p)
		if used[shipped] {
			shipped = fmt.Sprintf("%d-%s", i, shipped)
		}
		used[shipped] = true
		info.Disks[p] = shipped
		if err := addFile(p, shipped); err != nil {
			cleanup()
			return nil, nil, err
		}
	}
	sidecar, _ := json.MarshalIndent(info, "", " ")
	for n, b := range map[string][]byte{info.XML: dom.XML, libvirtSidecar: sidecar} {
		p := filepath.Join(stage, n)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			cleanup()
			return nil, nil, err
		}
		if err := addFile(p, n); err != nil {
			cleanup()
			return nil, nil, err
		}
	}
	dirInfo, err := os.Stat(stage)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	srcs = append(srcs, archive.Source{Path: stage, Name: dom.Name, Info: dirInfo})
	return srcs, cleanup, nil
}

// libvirtDefine points the restored definition at the restored disks and
// defines (and starts) the domain.
func libvirtDefine(ctx context.Context, lv *hooks.Libvirt, out string, restored []string, start bool) (string, error) {
	var sidecar string
	for _, p := range restored {
		if filepath.Base(p) == libvirtSidecar {
			sidecar = p
		}
	}
	if sidecar == "" {
		return "", fmt.Errorf("--libvirt-define: the shipment holds no libvirt domain (it was not sent with --libvirt-domain)")
	}
	b, err := os.ReadFile(sidecar)
	if err != nil {
		return "", err
	}
	var info libvirtInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return "", fmt.Errorf("%s: %w", sidecar, err)
	}
	dir := filepath.Dir(sidecar)
	xml, err := os.ReadFile(filepath.Join(dir, filepath.Base(info.XML)))
	if err != nil {
		return "", err
	}
	paths := map[string]string{}
	for old, shipped := range info.Disks {
		paths[old] = filepath.Join(dir, filepath.Base(shipped))
	}
	xml, err = hooks.RewriteDisks(xml, paths)
	if err != nil {
		return "", err
	}
	// Keep the definition that is defined next to the images, so that it
	// can be defined again by hand (atomically replaced).
	xmlPath := filepath.Join(dir, filepath.Base(info.XML))
	tmp := xmlPath + ".coldship-tmp"
	if err := os.WriteFile(tmp, xml, 0o600); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, xmlPath); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return lv.DefineAndStart(ctx, xml, start)
}
