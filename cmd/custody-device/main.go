// Command custody-device is the device side of Custody: the factory line
// makes devices with it (init), field staff pair them (pair), and devices,
// real or simulated, run its agent (run, simulate).
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/label"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

const usage = `usage: custody-device <command> [flags]

Commands:
  init      --model M --serial S [--dir DIR] [--claim-url URL]
            Make one device at the factory, into DIR (default ./<serial>):
              device.key     the identity private key (0600); it never leaves DIR
              identity.json  serial number and model
              device.yaml    the Device manifest for the ERP (public key, claim-code verifier)
              label.svg      the printable label: QR code (claim URL, key fingerprint),
                             the claim code in the scratch-off area (0600)
              label.txt      the same in text (0600)
  pair      --dir DIR (--code CODE | --token TOKEN)
            Give the device the pairing code shown in a Claim's status.pairing.code,
            or a tenant's pairing token (the device then claims itself for it).
  run       --dir DIR --gateway URL --gateway-ca FILE
            [--dataplane ssl://HOST:PORT --dataplane-ca FILE --publish-interval 10s]
            Run the device agent: prove possession if paired, enroll, renew at 2/3
            of the certificate's life, send heartbeats. With --dataplane, also
            connect to the data plane over MQTT 3.1.1 with the current certificate
            and publish telemetry on devices/<model>/<serial>/telemetry; reconnect
            with a renewed certificate, and under the new owner after a transfer.
            Ctrl-C stops.
  simulate  --count N --gateway URL --gateway-ca FILE --dir DIR [--model M] [--prefix P]
            [--dataplane ssl://HOST:PORT --dataplane-ca FILE --publish-interval 1s --duration 30s]
            Run N simulated devices made with init (DIR/<serial>) until each holds a
            certificate; print enrollments/s and latency percentiles. With
            --dataplane, then connect them all to the data plane and publish
            telemetry for --duration; print connections and messages/s.
  factory   the former name of init.
`

var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	if errors.Is(err, errUsage) {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "custody-device:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "init", "factory":
		return cmdInit(args[1:], stdout)
	case "pair":
		return cmdPair(args[1:], stdout)
	case "run":
		return cmdRun(ctx, args[1:])
	case "simulate":
		return cmdSimulate(ctx, args[1:], stdout)
	}
	return errUsage
}

func cmdInit(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	model := fs.String("model", "", "product model, upper case (e.g. XR200)")
	serial := fs.String("serial", "", "serial number, upper case (e.g. SN-0001)")
	dir := fs.String("dir", "", "device directory (default ./<serial>)")
	out := fs.String("out", "", "alias of --dir")
	claimURL := fs.String("claim-url", "https://claim.custody.example", "base URL printed in the QR code")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *model == "" || *serial == "" {
		fmt.Fprintln(os.Stderr, "custody-device: --model and --serial are required")
		return errUsage
	}
	d := *dir
	if d == "" {
		d = *out
	}
	if d == "" {
		d = *serial
	}
	return initDevice(d, *model, *serial, *claimURL, stdout)
}

// deviceManifest is the Device as the ERP applies it: no status, no
// server-set metadata, spec last so that the ERP can append the sale.
func deviceManifest(d *custodyv1alpha1.Device) ([]byte, error) {
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	delete(obj, "status")
	if md, ok := obj["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return yaml.Marshal(obj)
}

func initDevice(dir, model, serial, claimURL string, stdout io.Writer) error {
	rec, err := factory.Manufacture(model, serial)
	if err != nil {
		return err
	}
	manifest, err := deviceManifest(rec.Device)
	if err != nil {
		return err
	}
	id, _ := json.Marshal(device.IdentityFile{SerialNumber: serial, Model: model})
	svg, err := label.SVG(protocol.Label{BaseURL: claimURL, SerialNumber: serial, Model: model, Fingerprint: rec.Fingerprint}, rec.Code.String())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, device.FilePrivateKey)); err == nil {
		return fmt.Errorf("%s already holds a device; a device is made once", dir)
	}
	text := fmt.Sprintf("Model:       %s\nSerial:      %s\nKey:         %s\nClaim URL:   %s\nClaim code:  %s\n", model, serial, rec.Fingerprint,
		protocol.Label{BaseURL: claimURL, SerialNumber: serial, Model: model, Fingerprint: rec.Fingerprint}.URL(), rec.Code)
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{device.FilePrivateKey, rec.PrivateKeyPEM, 0o600},
		{device.FileIdentity, id, 0o644},
		{"device.yaml", manifest, 0o644},
		{"label.svg", svg, 0o600},
		{"label.txt", []byte(text), 0o600},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "made %s %s in %s: apply device.yaml as the ERP; print label.svg; the key stays in %s.\n", model, serial, dir, dir)
	return nil
}

func cmdPair(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("pair", flag.ContinueOnError)
	dir := fs.String("dir", ".", "device directory")
	code := fs.String("code", "", "pairing code from the Claim's status.pairing.code")
	token := fs.String("token", "", "a tenant's pairing token (<tenant>.<id>.<secret>): the device claims itself for that tenant")
	if err := fs.Parse(args); err != nil || (*code == "") == (*token == "") {
		return errUsage
	}
	if _, err := os.Stat(filepath.Join(*dir, device.FileIdentity)); err != nil {
		return fmt.Errorf("%s is not a device directory (made by custody-device init)", *dir)
	}
	if *token != "" {
		t, err := protocol.ParsePairingToken(*token)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(*dir, device.FilePairingToken), []byte(t.String()), 0o600); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "paired: the device claims itself for tenant "+t.Tenant+" with this token the next time it runs.")
		return nil
	}
	if err := os.WriteFile(filepath.Join(*dir, device.FilePairing), []byte(protocol.NormalizePairingCode(*code)), 0o600); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "paired: the device proves possession with this code the next time it runs.")
	return nil
}

type gatewayFlags struct{ url, ca string }

func (g *gatewayFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "gateway", "", "gateway URL (custody-dev writes it to .custody-dev/gateway-url)")
	fs.StringVar(&g.ca, "gateway-ca", "", "CA bundle that signed the gateway's certificate (custody-dev: .custody-dev/gateway-ca.crt)")
}

func (g *gatewayFlags) client() (*device.Client, error) {
	if g.url == "" || g.ca == "" {
		return nil, errUsage
	}
	pool, err := readPool(g.ca)
	if err != nil {
		return nil, err
	}
	return &device.Client{BaseURL: g.url, RootCAs: pool}, nil
}

// readPool reads a PEM CA bundle.
func readPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file) //nolint:gosec // the file the user named
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

func cmdRun(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	dir := fs.String("dir", ".", "device directory")
	firmware := fs.String("firmware", "1.0.0", "firmware version reported in heartbeats")
	interval := fs.Duration("heartbeat-interval", time.Minute, "time between heartbeats")
	dataPlane := fs.String("dataplane", "", "the data plane's MQTT listener, ssl://host:port (custody-dev writes it to .custody-dev/mqtt-url); empty: no telemetry")
	dataPlaneCA := fs.String("dataplane-ca", "", "CA bundle that signed the data plane's certificate (custody-dev: .custody-dev/gateway-ca.crt)")
	publish := fs.Duration("publish-interval", 10*time.Second, "time between telemetry messages on the data plane")
	var gf gatewayFlags
	gf.bind(fs)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	c, err := gf.client()
	if err != nil {
		return err
	}
	a, err := device.LoadAgent(*dir, c)
	if err != nil {
		return err
	}
	a.Firmware, a.HeartbeatInterval = *firmware, *interval
	a.Log = zap.New(zap.UseDevMode(false)).WithValues("device", a.ID.Model+"/"+a.ID.SerialNumber)
	if *dataPlane == "" {
		return a.Run(ctx)
	}
	if *dataPlaneCA == "" || *publish <= 0 {
		return errUsage
	}
	roots, err := readPool(*dataPlaneCA)
	if err != nil {
		return err
	}
	p := &device.Publisher{Agent: a, URL: *dataPlane, RootCAs: roots, Interval: *publish, Log: a.Log.WithName("dataplane")}
	errs := make(chan error, 2)
	go func() { errs <- a.Run(ctx) }()
	go func() { errs <- p.Run(ctx) }()
	return errors.Join(<-errs, <-errs)
}

// cmdSimulate drives N device directories until each has enrolled, and
// reports throughput and latency. Claims are made by whoever runs the load
// (hack/load.sh); latency is from a device's first challenge to its
// certificate.
func cmdSimulate(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	count := fs.Int("count", 10, "number of devices")
	dir := fs.String("dir", "", "directory holding one device directory per serial (made with init)")
	concurrency := fs.Int("concurrency", 8, "devices enrolling at once")
	dataPlane := fs.String("dataplane", "", "after enrolling, connect every device to this MQTT listener (ssl://host:port) and publish telemetry")
	dataPlaneCA := fs.String("dataplane-ca", "", "CA bundle of the data plane's certificate")
	publish := fs.Duration("publish-interval", time.Second, "with --dataplane: time between a device's messages")
	duration := fs.Duration("duration", 30*time.Second, "with --dataplane: how long the devices publish")
	var gf gatewayFlags
	gf.bind(fs)
	if err := fs.Parse(args); err != nil || *dir == "" || (*dataPlane != "" && *dataPlaneCA == "") {
		return errUsage
	}
	c, err := gf.client()
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(*dir)
	if err != nil {
		return err
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(*dir, e.Name()))
		}
	}
	if len(dirs) < *count {
		return fmt.Errorf("%s holds %d devices, want %d", *dir, len(dirs), *count)
	}
	dirs = dirs[:*count]
	lat := make([]time.Duration, 0, len(dirs))
	var mu sync.Mutex
	var failed int
	sem := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for _, d := range dirs {
		wg.Add(1)
		sem <- struct{}{}
		go func(d string) {
			defer wg.Done()
			defer func() { <-sem }()
			a, err := device.LoadAgent(d, c)
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
				return
			}
			a.Log = logr.Discard()
			t0 := time.Now()
			for i := 0; i < 200 && ctx.Err() == nil; i++ {
				next, _ := a.Step(ctx)
				if cert, _ := a.Certificate(); cert != nil {
					mu.Lock()
					lat = append(lat, time.Since(t0))
					mu.Unlock()
					return
				}
				time.Sleep(next) // as the device would: Retry-After, back-off
			}
			mu.Lock()
			failed++
			mu.Unlock()
		}(d)
	}
	wg.Wait()
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	fmt.Fprintf(stdout, "devices=%d enrolled=%d failed=%d elapsed=%s enrollments/s=%.1f p50=%s p99=%s\n",
		len(dirs), len(lat), failed, elapsed.Round(time.Millisecond), float64(len(lat))/elapsed.Seconds(), pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d devices did not enroll", failed)
	}
	if *dataPlane == "" {
		return nil
	}
	roots, err := readPool(*dataPlaneCA)
	if err != nil {
		return err
	}
	return simulateTelemetry(ctx, dirs, c, *dataPlane, roots, *publish, *duration, stdout)
}

// simulateTelemetry connects every enrolled device to the data plane and
// has each publish every interval for duration; it reports the connections
// made and the messages the data plane acknowledged (QoS 1) per second.
func simulateTelemetry(ctx context.Context, dirs []string, c *device.Client, url string, roots *x509.CertPool, interval, duration time.Duration, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var sent, failedSends, connected atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, d := range dirs {
		a, err := device.LoadAgent(d, c)
		if err != nil {
			return err
		}
		p := &device.Publisher{Agent: a, URL: url, RootCAs: roots, Interval: interval}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer p.Close()
			ticker := time.NewTicker(interval)
			defer ticker.Stop()
			counted := false
			for {
				if err := p.PublishOnce(ctx); err != nil {
					if ctx.Err() == nil {
						failedSends.Add(1)
					}
				} else {
					sent.Add(1)
					if !counted {
						connected.Add(1)
						counted = true
					}
				}
				select {
				case <-ctx.Done():
					return
				case <-ticker.C:
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Fprintf(stdout, "dataplane: devices=%d connected=%d messages=%d failed=%d elapsed=%s messages/s=%.1f\n",
		len(dirs), connected.Load(), sent.Load(), failedSends.Load(), elapsed.Round(time.Millisecond), float64(sent.Load())/elapsed.Seconds())
	if connected.Load() < int64(len(dirs)) {
		return fmt.Errorf("%d devices never published", int64(len(dirs))-connected.Load())
	}
	return nil
}
