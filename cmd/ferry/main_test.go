package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/bench"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// A test that needs a relay in its own process re-runs this test binary
// with FERRY_TEST_MAIN set to the arguments, tab-separated.
func TestMain(m *testing.M) {
	bench.DeviceMain()
	if args := os.Getenv("FERRY_TEST_MAIN"); args != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, strings.Split(args, "\t"), os.Stdout, os.Stderr)
		stop()
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// relayProc is a relay running as a child process.
type relayProc struct {
	cmd *exec.Cmd
	url string
}

func startRelay(t *testing.T, args ...string) *relayProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FERRY_TEST_MAIN="+strings.Join(append([]string{"relay"}, args...), "\t"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &relayProc{cmd: cmd}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("relay did not start: %v", err)
	}
	const prefix = "ferry relay listening on "
	if !strings.HasPrefix(line, prefix) {
		t.Fatalf("relay's first line = %q", line)
	}
	p.url = strings.TrimSpace(strings.TrimPrefix(line, prefix))
	go func() { bufio.NewReader(out).WriteTo(discard{}) }() // keep the pipe drained
	return p
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// kill ends the relay with SIGKILL, as a crash would.
func (p *relayProc) kill(t *testing.T) {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// stop ends the relay with SIGTERM and waits for a clean exit.
func (p *relayProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("relay exited with %v after SIGTERM", err)
	}
}

// testConfig writes a config with one app and returns its path and app.
func testConfig(t *testing.T, dir string) (string, relay.App) {
	t.Helper()
	return testConfigWith(t, dir, nil)
}

// testConfigWith is testConfig with the config changed by tweak first.
func testConfigWith(t *testing.T, dir string, tweak func(*Config)) (string, relay.App) {
	t.Helper()
	app := relay.NewApp("shop")
	c := Config{Apps: []AppConfig{{App: app}}, LogLevel: "warn"}
	if tweak != nil {
		tweak(&c)
	}
	b, _ := json.Marshal(c)
	path := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, app
}

func dialRelay(t *testing.T, url string, app relay.App, replica string) (*transport.Client, error) {
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "tester", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	c := transport.NewClient(conn, nil)
	if err := c.Call(ctx, &transport.Hello{APIKey: app.APIKey, Token: tok, ReplicaID: replica, Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
