package sftp

// ReadChunk is the size of a read buffer.
const ReadChunk = readChunk

// SetReadBudget gives tr's reads a budget of bytes instead of readBudget.
// It is called before tr opens anything.
func SetReadBudget(tr *Transport, bytes int) {
	tr.reads = newReadBuffers(bytes, len(tr.streams))
}

// ReadBuffers reports tr's read buffers in bytes: those handed out now,
// the most handed out at once, and the most of them lent for read-ahead.
func ReadBuffers(tr *Transport) (out, peakOut, peakLent int) {
	b := tr.reads
	b.mu.Lock()
	defer b.mu.Unlock()
	return (b.owned + b.lent) * readChunk, b.peakOut * readChunk, b.peakLent * readChunk
}

// WriteSSHConfig writes text as an ssh_config file for Config.SSHConfig.
var WriteSSHConfig = writeSSHConfig
