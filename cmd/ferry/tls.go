package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// certReloader serves the certificate in a pair of PEM files and picks up
// new files without a restart: every TLS handshake stats both files, and
// when either has changed (another file renamed over it, or rewritten) the
// pair is loaded again. Connections already open keep the certificate they
// were made with; only new handshakes see the new one. A pair that does
// not load (the key rewritten but not yet the certificate, say) is logged
// once, and the last good pair is served until a good one appears.
//
// A stat per handshake costs microseconds, against the milliseconds of
// the handshake; devices hold their connections for long, so handshakes
// are rare. Its methods are safe for concurrent use.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu     sync.Mutex
	cert   *tls.Certificate
	loaded [2]os.FileInfo // of the pair cert came from
	failed [2]os.FileInfo // of the last pair that did not load, logged once
}

// newCertReloader loads the pair, failing if it does not load now.
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	st, err := r.stat()
	if err != nil {
		return nil, err
	}
	if err := r.load(st); err != nil {
		return nil, err
	}
	return r, nil
}

// stat returns the files' info.
func (r *certReloader) stat() ([2]os.FileInfo, error) {
	var st [2]os.FileInfo
	for i, name := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return st, fmt.Errorf("tls: %w", err)
		}
		st[i] = fi
	}
	return st, nil
}

func (r *certReloader) load(st [2]os.FileInfo) error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tls: loading %s and %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.loaded = &cert, st
	return nil
}

// GetCertificate is tls.Config's GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.stat()
	if err != nil {
		// Between a removal and a rename, say: keep serving.
		return r.cert, nil
	}
	if same(st, r.loaded) || same(st, r.failed) {
		return r.cert, nil
	}
	if err := r.load(st); err != nil {
		r.failed = st
		r.log.Warn("TLS certificate files changed but do not load; serving the previous certificate", "err", err)
		return r.cert, nil
	}
	r.failed = [2]os.FileInfo{}
	r.log.Info("TLS certificate reloaded", "cert", r.certFile, "not_after", r.cert.Leaf.NotAfter)
	return r.cert, nil
}

// same reports whether two stats are of the same, unchanged files: the same
// inode (a file renamed over the old one is another), size and time.
func same(a, b [2]os.FileInfo) bool {
	for i := range a {
		if a[i] == nil || b[i] == nil || !os.SameFile(a[i], b[i]) ||
			a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()) {
			return false
		}
	}
	return true
}

// tlsConfig serves r's certificate, TLS 1.2 and later.
func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{GetCertificate: r.GetCertificate, MinVersion: tls.VersionTLS12}
}
