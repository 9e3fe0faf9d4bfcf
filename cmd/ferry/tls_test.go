package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/transport"
)

// testCA signs certificates for 127.0.0.1.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a PEM certificate and key for 127.0.0.1 with the serial.
func (ca *testCA) issue(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// replaceFile puts b at path the way certificate tools do: a new file
// renamed over the old one.
func replaceFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// servedSerial makes a new TLS connection to addr and returns the serial
// of the certificate it is served.
func servedSerial(t *testing.T, addr string, pool *x509.CertPool) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestRelayServesTLS runs a relay with --tls-cert and --tls-key, syncs a
// device over wss://, replaces the certificate files, and checks that a
// new connection gets the new certificate while the open one goes on.
// The relay stats the files on each handshake, so nothing waits on time.
func TestRelayServesTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c1, k1 := ca.issue(t, 1001)
	replaceFile(t, certFile, c1)
	replaceFile(t, keyFile, k1)

	r := startInProcess(t, "relay", "--dev", "--data", filepath.Join(dir, "data"), "--addr", "127.0.0.1:0",
		"--log-level", "error", "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(r.url, "wss://") {
		t.Fatalf("relay URL %q is not wss://", r.url)
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(r.url, "wss://"), "/ws")
	if got := servedSerial(t, addr, ca.pool); got != 1001 {
		t.Fatalf("served serial %d, want 1001", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	conn, err := transport.Dial(ctx, r.url, &transport.Options{Dial: &websocket.DialOptions{HTTPClient: client}})
	if err != nil {
		t.Fatal(err)
	}
	old := transport.NewClient(conn, nil)
	defer old.Close()
	if err := old.Call(ctx, &transport.Hello{APIKey: r.apiKey, Token: r.token, ReplicaID: "r1", Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		t.Fatalf("hello over wss: %v", err)
	}

	// New files: the next handshake serves them.
	c2, k2 := ca.issue(t, 1002)
	replaceFile(t, keyFile, k2)
	replaceFile(t, certFile, c2)
	if got := servedSerial(t, addr, ca.pool); got != 1002 {
		t.Fatalf("after replacing the files, served serial %d, want 1002", got)
	}
	// The connection made with the old certificate is still up.
	if err := old.Call(ctx, &transport.Pull{Collection: "notes"}, &transport.Changes{}); err != nil {
		t.Fatalf("the open connection broke at the reload: %v", err)
	}

	// A half-replaced pair (a new key, the old certificate) does not load:
	// the last good pair is still served.
	_, k3 := ca.issue(t, 1003)
	replaceFile(t, keyFile, k3)
	if got := servedSerial(t, addr, ca.pool); got != 1002 {
		t.Fatalf("with a mismatched pair, served serial %d, want 1002", got)
	}
	r.stop(t)
}

func TestRelayTLSFilesAreCheckedAtStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not PEM"), 0o600)
	data := filepath.Join(dir, "data")
	code, _, errs := runCLI(t, "relay", "--dev", "--data", data, "--addr", "127.0.0.1:0", "--tls-cert", bad, "--tls-key", bad)
	if code != 1 || !strings.Contains(errs, "tls") {
		t.Fatalf("exit %d: %s", code, errs)
	}
	mustNotExist(t, data)
}
