// Command custody-device is the device side of Custody: the factory line
// makes devices with it (init), field staff pair them (pair), and devices,
// real or simulated, run its agent (run, simulate).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/label"
	"github.com/custody-dev/custody/internal/loadtest"
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
  init      --model M --count N --serial-prefix P [--first F] [--dir DIR] [--claim-url URL]
            Make a batch of N devices (1 to 10000), serial numbers P-000001, P-000002,
            ... (from P-<F>), into DIR (default ./P): DIR/<serial>/ for each device as
            above, and
              devices.yaml      the batch's Device manifests as one v1 List, for the ERP
              devices.csv       serial_number, model, device_name, key_fingerprint,
                                claim_code_verifier: for the ERP; no claim code, no key
              labels-NNNN.svg   print-ready A4 label sheets, 10 labels a page, in serial
                                order; they carry the claim codes (0600)
            Refuses if any of these exists already.
  pair      --dir DIR (--code CODE | --token TOKEN)
            Give the device the pairing code shown in a Claim's status.pairing.code,
            or a tenant's pairing token (the device then claims itself for it).
  run       --dir DIR --gateway URL --gateway-ca FILE [--once [--wait 1m]] [--verbose]
            [--dataplane ssl://HOST:PORT --dataplane-ca FILE --publish-interval 10s]
            Run the device agent: prove possession if paired, enroll, renew at 2/3
            of the certificate's life, send heartbeats. With --dataplane, also
            connect to the data plane over MQTT 3.1.1 with the current certificate
            and publish telemetry on devices/<model>/<serial>/telemetry; reconnect
            with a renewed certificate, and under the new owner after a transfer.
            Ctrl-C stops. It logs each change (enrolled, renewed, cut off, waiting
            for the binding, failures) and the first heartbeat, then one line an
            hour while all is well; --verbose logs every heartbeat too.
            With --once: one cycle, then exit 0: enroll if needed (waiting while
            the device is not bound yet), renew if due, send one heartbeat, and
            with --dataplane publish one message. Exit 1 if that is not done
            within --wait, or at the first error that is not a wait.
  simulate  --count N --gateway URL --gateway-ca FILE --dir DIR [--concurrency C] [--json]
            [--mode enroll|renew|heartbeat] [--keep-alive] [--duration 30s]
            [--dataplane ssl://HOST:PORT --dataplane-ca FILE --publish-interval 1s]
            Run N simulated devices made with init (DIR/<serial>), C at a time.
            enroll (default): until each holds a certificate; renew: each renews
            once (EST simplereenroll); heartbeat: send mutual-TLS heartbeats as
            fast as answered for --duration, a new TLS handshake each unless
            --keep-alive. Print the rate and latency percentiles. With
            --dataplane (enroll), then connect them all to the data plane and
            publish telemetry for --duration; print connections and messages/s.
  factory   the former name of init.
`

var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, errUsage) {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "custody-device:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "init", "factory":
		return cmdInit(args[1:], stdout)
	case "pair":
		return cmdPair(args[1:], stdout)
	case "run":
		return cmdRun(ctx, args[1:], stderr)
	case "simulate":
		return cmdSimulate(ctx, args[1:], stdout)
	}
	return errUsage
}

func cmdInit(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	model := fs.String("model", "", "product model, upper case (e.g. XR200)")
	serial := fs.String("serial", "", "serial number, upper case (e.g. SN-0001)")
	count := fs.Int("count", 0, fmt.Sprintf("make a batch of this many devices (1 to %d), numbered <serial-prefix>-000001 and on", factory.MaxBatch))
	prefix := fs.String("serial-prefix", "", "with --count: the serial numbers' prefix, upper case (e.g. XR-2026W49 makes XR-2026W49-000001, ...)")
	first := fs.Int("first", 1, "with --count: the number of the batch's first device (to go on from an earlier batch)")
	dir := fs.String("dir", "", "device directory (default ./<serial>); with --count, the batch directory (default ./<serial-prefix>)")
	out := fs.String("out", "", "alias of --dir")
	claimURL := fs.String("claim-url", "https://claim.custody.example", "base URL printed in the QR code")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	d := *dir
	if d == "" {
		d = *out
	}
	if err := checkClaimURL(*claimURL); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["count"] || set["serial-prefix"] || set["first"] {
		switch {
		case *model == "":
			return errors.New("--model is required: a batch is of one model")
		case *serial != "":
			return errors.New("--serial makes one device and --count a batch: give one of them")
		case !set["count"]:
			return errors.New("--serial-prefix and --first number a batch: give its size with --count")
		}
		if d == "" {
			d = *prefix
		}
		return initBatch(d, *model, *prefix, *first, *count, *claimURL, stdout)
	}
	if *model == "" || *serial == "" {
		fmt.Fprintln(os.Stderr, "custody-device: --model and --serial (or --count and --serial-prefix) are required")
		return errUsage
	}
	if d == "" {
		d = *serial
	}
	return initDevice(d, *model, *serial, *claimURL, stdout)
}

type deviceFile struct {
	name string
	data []byte
	mode os.FileMode
}

// deviceFiles is what init writes into a device's directory.
// checkClaimURL refuses a --claim-url the label's QR code would carry
// wrongly: it must be an https URL with a host and no user, query or
// fragment (the label adds /claim and its own query).
func checkClaimURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("--claim-url %q: %w", s, err)
	case u.Scheme != "https" || u.Host == "" || u.Opaque != "":
		return fmt.Errorf("--claim-url %q: give an https URL with a host, e.g. https://claim.example.com", s)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Errorf("--claim-url %q: no user, query or fragment; the label adds /claim?serial=…&model=…&fp=… itself", s)
	}
	return nil
}

func deviceFiles(rec *factory.Record, claimURL string) ([]deviceFile, error) {
	s := rec.Device.Spec
	manifest, err := factory.Manifest(rec.Device)
	if err != nil {
		return nil, err
	}
	id, _ := json.Marshal(device.IdentityFile{SerialNumber: s.SerialNumber, Model: s.Model})
	l := protocol.Label{BaseURL: claimURL, SerialNumber: s.SerialNumber, Model: s.Model, Fingerprint: rec.Fingerprint}
	svg, err := label.SVG(l, rec.Code.String())
	if err != nil {
		return nil, err
	}
	text := fmt.Sprintf("Model:       %s\nSerial:      %s\nKey:         %s\nClaim URL:   %s\nClaim code:  %s\n", s.Model, s.SerialNumber, rec.Fingerprint, l.URL(), rec.Code)
	return []deviceFile{
		{device.FilePrivateKey, rec.PrivateKeyPEM, 0o600},
		{device.FileIdentity, id, 0o644},
		{"device.yaml", manifest, 0o644},
		{"label.svg", svg, 0o600},
		{"label.txt", []byte(text), 0o600},
	}, nil
}

func writeFiles(dir string, files []deviceFile) error {
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func initDevice(dir, model, serial, claimURL string, stdout io.Writer) error {
	rec, err := factory.Manufacture(model, serial)
	if err != nil {
		return err
	}
	files, err := deviceFiles(rec, claimURL)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, device.FilePrivateKey)); err == nil {
		return fmt.Errorf("%s already holds a device; a device is made once", dir)
	}
	if err := writeFiles(dir, files); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "made %s %s in %s: apply device.yaml as the ERP; print label.svg; the key stays in %s.\n", model, serial, dir, dir)
	return nil
}

// Files of a batch directory, beside one directory per device.
const (
	batchManifest = "devices.yaml"
	batchCSV      = "devices.csv"
	batchSheet    = "labels-%04d.svg"
)

// initBatch makes count devices into dir: one directory per device, as
// single init makes it, the Device manifests as one List, the ERP's CSV,
// and the label sheets. It refuses, before making anything, if any of
// these exists already.
func initBatch(dir, model, prefix string, first, count int, claimURL string, stdout io.Writer) error {
	serials, err := factory.Serials(prefix, first, count)
	if err != nil {
		return err
	}
	pages := (count + label.PerPage - 1) / label.PerPage
	top := []string{batchManifest, batchCSV}
	for p := 1; p <= pages; p++ {
		top = append(top, fmt.Sprintf(batchSheet, p))
	}
	// Refuse before the slow part, and again when writing (exclusively).
	for _, name := range append(top, serials...) {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("%s already exists: a device is made once; choose another --dir, or go on numbering with --first", filepath.Join(dir, name))
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	start := time.Now()
	recs, err := factory.ManufactureBatch(model, serials, runtime.GOMAXPROCS(0))
	if err != nil {
		return err
	}
	perDevice := make([][]deviceFile, len(recs))
	items := make([]label.Item, len(recs))
	for i, rec := range recs {
		if perDevice[i], err = deviceFiles(rec, claimURL); err != nil {
			return err
		}
		items[i] = label.Item{Label: protocol.Label{BaseURL: claimURL, SerialNumber: serials[i], Model: model, Fingerprint: rec.Fingerprint}, Code: rec.Code.String()}
	}
	sheets, err := label.Sheet(items)
	if err != nil {
		return err
	}
	list, err := factory.ManifestList(recs)
	if err != nil {
		return err
	}
	var csvBuf bytes.Buffer
	if err := factory.WriteERPCSV(&csvBuf, recs); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i, s := range serials {
		p := filepath.Join(dir, s)
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("%w (the devices before %s were written)", err, s)
		}
		if err := writeFiles(p, perDevice[i]); err != nil {
			return err
		}
	}
	outputs := []deviceFile{{batchManifest, list, 0o644}, {batchCSV, csvBuf.Bytes(), 0o644}}
	for i, sheet := range sheets {
		outputs = append(outputs, deviceFile{fmt.Sprintf(batchSheet, i+1), sheet, 0o600})
	}
	for _, f := range outputs {
		if err := writeExclusive(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	sheetNames := fmt.Sprintf(batchSheet, 1)
	if pages > 1 {
		sheetNames += " to " + fmt.Sprintf(batchSheet, pages)
	}
	made := fmt.Sprintf("%d %s devices, %s to %s", count, model, serials[0], serials[len(serials)-1])
	if count == 1 {
		made = fmt.Sprintf("1 %s device, %s", model, serials[0])
	}
	fmt.Fprintf(stdout, "made %s, in %s in %s: apply %s as the ERP (or import %s); print %s (%d labels per A4 page), then destroy %s; each key stays in %s.\n",
		made, dir, time.Since(start).Round(time.Millisecond), batchManifest, batchCSV,
		sheetNames, label.PerPage, map[bool]string{true: "the sheet files", false: "the sheet file"}[pages > 1], filepath.Join(dir, "<serial>"))
	return nil
}

// writeExclusive creates name with data, failing if it exists.
func writeExclusive(name string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode) //nolint:gosec // a file of the batch directory the operator named
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
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
	pool, err := device.LoadRootCAs(g.ca)
	if err != nil {
		return nil, err
	}
	return &device.Client{BaseURL: g.url, RootCAs: pool}, nil
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	dir := fs.String("dir", ".", "device directory")
	firmware := fs.String("firmware", "1.0.0", "firmware version reported in heartbeats")
	interval := fs.Duration("heartbeat-interval", time.Minute, "time between heartbeats")
	dataPlane := fs.String("dataplane", "", "the data plane's MQTT listener, ssl://host:port (custody-dev writes it to .custody-dev/mqtt-url); empty: no telemetry")
	dataPlaneCA := fs.String("dataplane-ca", "", "CA bundle that signed the data plane's certificate (custody-dev: .custody-dev/gateway-ca.crt)")
	publish := fs.Duration("publish-interval", 10*time.Second, "time between telemetry messages on the data plane")
	once := fs.Bool("once", false, "one cycle, then exit 0: enroll if needed, renew if due, send one heartbeat (with --dataplane: publish one message)")
	wait := fs.Duration("wait", time.Minute, "with --once: how long to wait for the device to be bound and for the gateway and data plane before giving up (exit 1)")
	verbose := fs.Bool("verbose", false, "log every heartbeat and retry, not only changes and an hourly line")
	var gf gatewayFlags
	gf.bind(fs)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *wait <= 0 {
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
	level := zapcore.InfoLevel
	if *verbose {
		level = zapcore.DebugLevel
	}
	a.Log = zap.New(zap.WriteTo(stderr), zap.Level(level), zap.UseDevMode(false), func(o *zap.Options) { o.TimeEncoder = zapcore.RFC3339TimeEncoder }).
		WithValues("device", a.ID.Model+"/"+a.ID.SerialNumber)
	var p *device.Publisher
	if *dataPlane != "" {
		if *dataPlaneCA == "" || *publish <= 0 {
			return errUsage
		}
		roots, err := device.LoadRootCAs(*dataPlaneCA)
		if err != nil {
			return err
		}
		p = &device.Publisher{Agent: a, URL: *dataPlane, RootCAs: roots, Interval: *publish, Log: a.Log.WithName("dataplane")}
	}
	if *once {
		return runOnce(ctx, a, p, *wait)
	}
	if p == nil {
		return a.Run(ctx)
	}
	errs := make(chan error, 2)
	go func() { errs <- a.Run(ctx) }()
	go func() { errs <- p.Run(ctx) }()
	return errors.Join(<-errs, <-errs)
}

// runOnce is run --once: one cycle of the agent and, with a Publisher,
// one telemetry message, all within wait.
func runOnce(ctx context.Context, a *device.Agent, p *device.Publisher, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := a.Once(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("gave up after --wait %s: %w", wait, err)
		}
		return err
	}
	if p == nil {
		return nil
	}
	defer p.Close()
	// The data plane admits a certificate once it sees the binding, which
	// right after an enrollment may take a moment: try again until wait.
	for {
		err := p.PublishOnce(ctx)
		if err == nil {
			p.Log.Info("telemetry sent", "topic", protocol.DeviceTopic(protocol.DeviceName(a.ID.Model, a.ID.SerialNumber), protocol.SuffixTelemetry))
			return nil
		}
		p.Log.V(1).Info("telemetry not sent", "error", err.Error())
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after --wait %s: no telemetry sent: %w", wait, err)
		case <-time.After(time.Second):
		}
	}
}

// cmdSimulate drives N device directories made with init. In enroll mode
// (the default) each enrols until it holds a certificate; claims are made
// by whoever runs the load (hack/load.sh); latency is from a device's first
// challenge to its certificate. In renew mode each enrolled device renews
// once (EST simplereenroll over mutual TLS); in heartbeat mode the devices
// send mutual-TLS heartbeats as fast as they are answered for --duration.
// It prints throughput and latency percentiles, as JSON with --json.
func cmdSimulate(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	count := fs.Int("count", 10, "number of devices")
	dir := fs.String("dir", "", "directory holding one device directory per serial (made with init)")
	concurrency := fs.Int("concurrency", 8, "devices enrolling (renewing, sending heartbeats) at once")
	mode := fs.String("mode", "enroll", "enroll: until each device holds a certificate; renew: each enrolled device renews once; heartbeat: enrolled devices send heartbeats as fast as they can for --duration")
	keepAlive := fs.Bool("keep-alive", false, "with --mode heartbeat: each device keeps its mutual-TLS connection open between heartbeats (default: a new connection and TLS handshake per heartbeat, as the device agent does)")
	asJSON := fs.Bool("json", false, "print the result as one line of JSON")
	dataPlane := fs.String("dataplane", "", "after enrolling, connect every device to this MQTT listener (ssl://host:port) and publish telemetry")
	dataPlaneCA := fs.String("dataplane-ca", "", "CA bundle of the data plane's certificate")
	publish := fs.Duration("publish-interval", time.Second, "with --dataplane: time between a device's messages")
	duration := fs.Duration("duration", 30*time.Second, "with --dataplane: how long the devices publish; with --mode heartbeat: how long they send heartbeats")
	var gf gatewayFlags
	gf.bind(fs)
	if err := fs.Parse(args); err != nil || *dir == "" || *concurrency < 1 || (*dataPlane != "" && *dataPlaneCA == "") {
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
	var res loadtest.SimResult
	switch *mode {
	case "enroll":
		res = simulateEach(ctx, dirs, c, *concurrency, enrollOnce)
	case "renew":
		res = simulateEach(ctx, dirs, c, *concurrency, func(ctx context.Context, a *device.Agent) error { return a.Renew(ctx) })
	case "heartbeat":
		res, err = simulateHeartbeats(ctx, dirs, c, *concurrency, *keepAlive, *duration)
		if err != nil {
			return err
		}
	default:
		return errUsage
	}
	res.Mode, res.Concurrency = *mode, *concurrency
	if *asJSON {
		line, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, string(line))
	} else {
		fmt.Fprintln(stdout, res)
	}
	if res.Failed > 0 && *mode != "heartbeat" {
		return fmt.Errorf("%d devices did not %s", res.Failed, *mode)
	}
	if *dataPlane == "" || *mode != "enroll" {
		return nil
	}
	roots, err := device.LoadRootCAs(*dataPlaneCA)
	if err != nil {
		return err
	}
	return simulateTelemetry(ctx, dirs, c, *dataPlane, roots, *publish, *duration, stdout)
}

// tally collects latencies and failures from concurrent workers.
type tally struct {
	mu     sync.Mutex
	lat    []time.Duration
	failed int
	errors map[string]int
}

func (t *tally) ok(d time.Duration) {
	t.mu.Lock()
	t.lat = append(t.lat, d)
	t.mu.Unlock()
}

func (t *tally) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed++
	if t.errors == nil {
		t.errors = map[string]int{}
	}
	if _, seen := t.errors[err.Error()]; seen || len(t.errors) < 10 {
		t.errors[err.Error()]++
	}
}

func (t *tally) result(devices int, elapsed time.Duration) loadtest.SimResult {
	return loadtest.SimResult{Devices: devices, OK: len(t.lat), Failed: t.failed, Errors: t.errors, ElapsedSeconds: elapsed.Seconds(),
		PerSecond: float64(len(t.lat)) / elapsed.Seconds(), Latency: loadtest.Summarise(t.lat)}
}

// simulateEach runs do once for every device, concurrency at a time.
func simulateEach(ctx context.Context, dirs []string, c *device.Client, concurrency int, do func(context.Context, *device.Agent) error) loadtest.SimResult {
	var t tally
	sem := make(chan struct{}, concurrency)
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
				t.fail(err)
				return
			}
			a.Log = logr.Discard()
			t0 := time.Now()
			if err := do(ctx, a); err != nil {
				t.fail(err)
				return
			}
			t.ok(time.Since(t0))
		}(d)
	}
	wg.Wait()
	return t.result(len(dirs), time.Since(start))
}

// enrollOnce steps a device as the agent does, honouring Retry-After and
// back-off, until it holds a certificate.
func enrollOnce(ctx context.Context, a *device.Agent) error {
	var last error
	for i := 0; i < 200 && ctx.Err() == nil; i++ {
		next, err := a.Step(ctx)
		if cert, _ := a.Certificate(); cert != nil {
			return nil
		}
		if err != nil {
			last = err
		}
		time.Sleep(next) // as the device would: Retry-After, back-off
	}
	if last == nil {
		last = errors.New("no certificate after 200 steps")
	}
	return last
}

// simulateHeartbeats has concurrency workers send heartbeats for duration,
// each cycling through its share of the devices (device i belongs to
// worker i mod concurrency; with fewer devices than workers, workers share
// them). With keepAlive each worker keeps one connection per device.
func simulateHeartbeats(ctx context.Context, dirs []string, c *device.Client, concurrency int, keepAlive bool, duration time.Duration) (loadtest.SimResult, error) {
	type dev struct {
		cert tls.Certificate
	}
	devs := make([]dev, 0, len(dirs))
	for _, d := range dirs {
		a, err := device.LoadAgent(d, c)
		if err != nil {
			return loadtest.SimResult{}, err
		}
		cert, _ := a.Certificate()
		if cert == nil {
			return loadtest.SimResult{}, fmt.Errorf("%s holds no certificate: enroll it first", d)
		}
		devs = append(devs, dev{cert: *cert})
	}
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	hb := protocol.HeartbeatRequest{FirmwareVersion: "load", State: "ok"}
	var t tally
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		var mine []int
		for i := w; i < len(devs); i += concurrency {
			mine = append(mine, i)
		}
		if len(mine) == 0 {
			mine = []int{w % len(devs)}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sessions := map[int]*device.Session{}
			defer func() {
				for _, s := range sessions {
					s.Close()
				}
			}()
			for n := 0; ctx.Err() == nil; n++ {
				i := mine[n%len(mine)]
				t0 := time.Now()
				var err error
				if keepAlive {
					s := sessions[i]
					if s == nil {
						s = c.KeepAlive(devs[i].cert)
						sessions[i] = s
					}
					err = s.Heartbeat(ctx, hb)
				} else {
					err = c.Heartbeat(ctx, devs[i].cert, hb)
				}
				switch {
				case ctx.Err() != nil: // cut off by the end of the run
				case err != nil:
					t.fail(err)
				default:
					t.ok(time.Since(t0))
				}
			}
		}()
	}
	wg.Wait()
	res := t.result(len(dirs), time.Since(start))
	res.KeepAlive = keepAlive
	return res, nil
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
