package s3

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/coldship/coldship/internal/home"
)

// maxConfigSize bounds what is read of the AWS config file: real ones are
// a few kilobytes.
const maxConfigSize = 1 << 20

// awsSection is one [section] of the AWS shared config file: its settings,
// and the sub-settings of a key whose value is given on indented lines
// below it ("s3 =" then "  endpoint_url = ...").
type awsSection struct {
	values map[string]string
	nested map[string]map[string]string
}

// awsConfig is the AWS shared config file (AWS_CONFIG_FILE, else
// ~/.aws/config) as the AWS CLI reads it, for what coldship takes from it:
// endpoint_url, services, ignore_configured_endpoint_urls and region of
// the profile in use.
type awsConfig struct {
	path     string
	profile  string // AWS_PROFILE, else "default"
	sections map[string]*awsSection
}

// loadAWSConfig reads the config file; a missing file is an empty one.
func loadAWSConfig() (*awsConfig, error) {
	c := &awsConfig{path: os.Getenv("AWS_CONFIG_FILE"), profile: os.Getenv("AWS_PROFILE")}
	if c.profile == "" {
		c.profile = "default"
	}
	if c.path == "" {
		h := home.Dir()
		if h == "" {
			return c, nil // no home: no file
		}
		c.path = filepath.Join(h, ".aws", "config")
	}
	f, err := os.Open(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("AWS config file: %w", err)
	}
	defer f.Close()
	c.sections, err = parseAWSConfig(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("AWS config file %s: %w", c.path, err)
	}
	return c, nil
}

// parseAWSConfig parses the INI dialect of the AWS config file: [section]
// headers, "key = value" lines, comment lines starting with # or ;, and
// indented "key = value" lines that belong to the last key whose value was
// empty. Lines it does not understand are skipped, as the AWS CLI skips
// what it does not use.
func parseAWSConfig(r io.Reader) (map[string]*awsSection, error) {
	sections := map[string]*awsSection{}
	var cur *awsSection
	parent := "" // the key that indented lines belong to
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxConfigSize)
	size := 0
	for sc.Scan() {
		line := sc.Text()
		if size += len(line) + 1; size > maxConfigSize {
			return nil, fmt.Errorf("larger than %d bytes", maxConfigSize)
		}
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';' {
			continue
		}
		if trimmed[0] == '[' && strings.HasSuffix(trimmed, "]") {
			name := strings.Join(strings.Fields(trimmed[1:len(trimmed)-1]), " ")
			if cur = sections[name]; cur == nil {
				cur = &awsSection{values: map[string]string{}, nested: map[string]map[string]string{}}
				sections[name] = cur
			}
			parent = ""
			continue
		}
		key, value, ok := strings.Cut(trimmed, "=")
		if !ok || cur == nil {
			continue
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if indented := line[0] == ' ' || line[0] == '\t'; indented && parent != "" {
			cur.nested[parent][key] = value
			continue
		}
		cur.values[key] = value
		parent = ""
		if value == "" {
			parent = key
			if cur.nested[key] == nil {
				cur.nested[key] = map[string]string{}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return sections, nil
}

// profileSection returns the section of the profile in use, or nil.
func (c *awsConfig) profileSection() *awsSection {
	if c.profile == "default" {
		if s := c.sections["default"]; s != nil {
			return s
		}
	}
	return c.sections["profile "+c.profile]
}

// setting returns a top-level setting of the profile.
func (c *awsConfig) setting(key string) string {
	if s := c.profileSection(); s != nil {
		return s.values[key]
	}
	return ""
}

// s3Endpoint returns the endpoint_url the profile gives S3, first from the
// [services NAME] section it names, then its own, and says where it was
// found; "" if neither has one.
func (c *awsConfig) s3Endpoint() (url, from string) {
	p := c.profileSection()
	if p == nil {
		return "", ""
	}
	if name := p.values["services"]; name != "" {
		if s := c.sections["services "+name]; s != nil && s.nested["s3"]["endpoint_url"] != "" {
			return s.nested["s3"]["endpoint_url"], fmt.Sprintf("endpoint_url for s3 in [services %s] of %s", name, c.path)
		}
	}
	if u := p.values["endpoint_url"]; u != "" {
		return u, fmt.Sprintf("endpoint_url of profile %s in %s", c.profile, c.path)
	}
	return "", ""
}

// sharedCredentialsFile names the shared credentials file for the
// credential chain when HOME is unset (a systemd unit without User=):
// ~/.aws/credentials of the home directory the password database gives,
// which minio-go would not find. "" leaves the choice to minio-go (the
// AWS CLI's: AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials merged
// over ~/.aws/config).
func sharedCredentialsFile() string {
	if os.Getenv("HOME") != "" || os.Getenv("AWS_SHARED_CREDENTIALS_FILE") != "" {
		return ""
	}
	if h := home.Dir(); h != "" {
		return filepath.Join(h, ".aws", "credentials")
	}
	return ""
}
