// Command custody-gateway serves the Custody device protocol over HTTPS:
// challenges, enrollment, possession proofs, heartbeats and EST renewal.
// It is stateless; run as many replicas as load needs, all with the same
// challenge key.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/gateway"
	"github.com/custody-dev/custody/internal/memlimit"
	"github.com/custody-dev/custody/internal/scheme"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "custody-gateway:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		listen, metrics, certFile, keyFile, keyFiles, namespace, trustDomain string
		challengeTTL, wait, maxStale, checkEvery, lastSeenEvery              time.Duration
		perClient, perSerial                                                 int
	)
	flag.StringVar(&listen, "listen", ":8443", "HTTPS listen address for devices.")
	flag.StringVar(&metrics, "metrics-bind-address", ":8080", "Metrics (/metrics) and probes (/healthz, /readyz) listen address (plain HTTP, cluster-internal); 0 disables.")
	flag.StringVar(&certFile, "tls-cert-file", "/etc/custody-gateway/tls/tls.crt", "Serving certificate (PEM chain).")
	flag.StringVar(&keyFile, "tls-key-file", "/etc/custody-gateway/tls/tls.key", "Serving key.")
	flag.StringVar(&keyFiles, "challenge-key-files", "/etc/custody-gateway/challenge/key", "Comma-separated files with challenge HMAC keys (32+ bytes each); the first signs, all verify. Every replica needs the same keys.")
	flag.StringVar(&namespace, "operator-namespace", envOr("POD_NAMESPACE", "custody-system"), "Namespace where DeviceProofs are recorded.")
	flag.StringVar(&trustDomain, "trust-domain", contract.DefaultTrustDomain, "SPIFFE trust domain of device identities (the manager's).")
	flag.DurationVar(&challengeTTL, "challenge-ttl", 5*time.Minute, "How long a challenge is valid.")
	flag.DurationVar(&wait, "enroll-wait", 10*time.Second, "How long an enrollment waits for its certificate before answering 202 with a ticket.")
	flag.DurationVar(&maxStale, "max-cache-staleness", time.Second, "How far the Device cache may trail the API server, as measured, before mutual-TLS requests are refused (503) rather than judged on a binding that may have changed.")
	flag.DurationVar(&checkEvery, "cache-check-interval", 5*time.Second, "How often one recently used Device is read from the API server to measure the cache's lag (one read per interval and replica).")
	flag.DurationVar(&lastSeenEvery, "last-seen-interval", 5*time.Minute, "A heartbeat writes the Device's status.lastSeen only when it is this old (or the report changed): a fleet of N devices costs at most N/interval writes per second.")
	flag.IntVar(&perClient, "rate-per-client", 120, "Requests per minute per client address and replica; raise it when many devices share an address (NAT).")
	flag.IntVar(&perSerial, "rate-per-serial", 30, "Challenges and proofs per minute per serial number and replica.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	logger := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(logger)
	if limit, err := memlimit.Set(); err != nil {
		logger.Error(err, "reading the container's memory limit; GOMEMLIMIT not set")
	} else if limit > 0 {
		logger.Info("Go's soft memory limit set from the container's", "GOMEMLIMIT", limit)
	}

	var keys [][]byte
	for _, f := range strings.Split(keyFiles, ",") {
		k, err := os.ReadFile(strings.TrimSpace(f)) //nolint:gosec // a path the operator configured
		if err != nil {
			return fmt.Errorf("reading a challenge key: %w", err)
		}
		keys = append(keys, k)
	}
	iss, err := challenge.NewIssuer(keys, challengeTTL, nil)
	if err != nil {
		return err
	}
	cfg := rest.CopyConfig(ctrl.GetConfigOrDie())
	// Requests read from the cache; the client writes proofs and
	// heartbeats (at most fleet/--last-seen-interval per second) and
	// spot-checks the cache.
	cfg.QPS, cfg.Burst = 200, 400
	sch := scheme.New()
	c, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	var g *gateway.Gateway
	cache, err := gateway.NewCache(cfg, sch, namespace, func(err error) { g.WatchError(err) })
	if err != nil {
		return err
	}
	g, err = gateway.New(gateway.Options{Client: c, Cache: cache, Challenges: iss, Namespace: namespace, TrustDomain: trustDomain, Wait: wait,
		MaxStaleness: maxStale, CheckInterval: checkEvery, HeartbeatInterval: lastSeenEvery,
		PerClientRate: perClient, PerSerialRate: perSerial, Log: logger.WithName("gateway"), Registerer: reg})
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Addr:    listen,
		Handler: g,
		// Client certificates are requested, not verified here: the
		// handlers verify them against the device's own tenant CA and
		// current binding.
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	ctx := ctrl.SetupSignalHandler()
	errs := make(chan error, 3)
	// Requests are answered 503 until the cache has synced.
	go func() {
		if err := g.Start(ctx); err != nil {
			errs <- err
		}
	}()
	if metrics != "0" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
		// Ready once the cache has synced: until then devices get 503.
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			select {
			case <-g.Ready():
				w.WriteHeader(http.StatusOK)
			default:
				http.Error(w, "the cache has not synced", http.StatusServiceUnavailable)
			}
		})
		msrv := &http.Server{Addr: metrics, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- msrv.ListenAndServe() }()
		defer func() { _ = msrv.Close() }()
	}
	go func() { errs <- srv.ListenAndServeTLS("", "") }()
	logger.Info("serving devices", "listen", listen, "namespace", namespace)
	select {
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	case err := <-errs:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
