// Package controlplane runs a real Kubernetes control plane for Custody's
// integration tests and for custody-dev: kube-apiserver and etcd (built from
// pinned Go modules, started through envtest), Custody's and cert-manager's
// CRDs, Custody's admission webhook configuration, an emulation of
// cert-manager's CertificateRequest admission (admission.go), cert-manager's
// controllers in-process as cert-manager's own user (without the built-in
// approver), and a self-signed root ClusterIssuer.
//
// It starts infrastructure only. It does not run the Custody manager; callers
// start it against Config so that tests can stop and restart it.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/custody-dev/custody/internal/operator"
)

// Defaults for Options.
const (
	DefaultOperatorNamespace = "custody-system"
	DefaultRootIssuer        = "custody-root"
)

// Options configure Start.
type Options struct {
	// DataDir, when set, keeps etcd's data under it, so that a restart
	// resumes with the same objects.
	// When empty everything lives in temporary directories removed on Stop.
	DataDir string

	// OperatorNamespace is the namespace of the Custody manager, where CA
	// material and CertificateRequests live. Defaults to custody-system.
	OperatorNamespace string

	// RootIssuer is the name of the self-signed root ClusterIssuer to
	// bootstrap. Defaults to custody-root.
	RootIssuer string

	// Log receives the control plane's and cert-manager's log lines.
	Log logr.Logger
}

// ControlPlane is a running control plane. Its exported fields are read-only.
type ControlPlane struct {
	// Config authenticates as a cluster admin (system:masters).
	Config *rest.Config
	// Client is an admin client with Custody's and cert-manager's types.
	Client client.Client
	// Scheme knows core Kubernetes, Custody and cert-manager types.
	Scheme *runtime.Scheme
	// OperatorNamespace and RootIssuer are the effective Options values.
	OperatorNamespace string
	RootIssuer        string

	env       *envtest.Environment
	cm        *certManager
	admission *certManagerAdmission
	temp      string
	logs      []*os.File
	// dataDir is Options.DataDir, where the children's pid files are.
	dataDir string
}

// Start starts etcd and kube-apiserver, installs the CRDs and the webhook
// configuration, runs cert-manager and bootstraps the root ClusterIssuer.
// Call Stop when done, also after an error.
func Start(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	if opts.OperatorNamespace == "" {
		opts.OperatorNamespace = DefaultOperatorNamespace
	}
	if opts.RootIssuer == "" {
		opts.RootIssuer = DefaultRootIssuer
	}
	log := opts.Log
	if log.GetSink() == nil {
		log = logr.Discard()
	}

	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	crds, err := CRDs()
	if err != nil {
		return nil, fmt.Errorf("loading CRDs: %w", err)
	}
	mutating, validating, err := Webhooks()
	if err != nil {
		return nil, fmt.Errorf("loading webhook configuration: %w", err)
	}

	cp = &ControlPlane{
		Scheme:            operator.NewScheme(),
		OperatorNamespace: opts.OperatorNamespace,
		RootIssuer:        opts.RootIssuer,
	}
	cp.temp, err = os.MkdirTemp("", "custody-controlplane-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, cp.Stop())
			cp = nil
		}
	}()

	webhookPort, err := servingPort()
	if err != nil {
		return cp, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDInstallOptions: envtest.CRDInstallOptions{
			CRDs:               crds,
			ErrorIfPathMissing: true,
		},
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			MutatingWebhooks:   mutating,
			ValidatingWebhooks: validating,
			LocalServingHost:   "127.0.0.1",
			LocalServingPort:   webhookPort,
		},
		ErrorIfCRDPathMissing: true,
		Scheme:                cp.Scheme,
	}
	etcd := &envtest.Etcd{}
	apiServer := env.ControlPlane.GetAPIServer()
	env.ControlPlane.Etcd = etcd
	pidFile := func(string) string { return "" }
	if opts.DataDir != "" {
		// Only etcd's data persists: the API server's certificates (and so
		// every kubeconfig) are made afresh on each start.
		etcd.DataDir = filepath.Join(opts.DataDir, "etcd")
		if err := os.MkdirAll(etcd.DataDir, 0o700); err != nil {
			return cp, err
		}
		pidFile = func(name string) string { return pidFilePath(opts.DataDir, name) }
		cp.dataDir = opts.DataDir
		// An earlier run killed hard may have left its children running,
		// holding etcd's data directory.
		ended, err := EndLeftovers(opts.DataDir)
		if err != nil {
			return cp, err
		}
		if len(ended) > 0 {
			log.Info("ended processes an earlier run left behind", "processes", ended)
		}
		// Their output goes to <data-dir>/logs, where a failed start can be
		// read about.
		logs := filepath.Join(opts.DataDir, "logs")
		if err := os.MkdirAll(logs, 0o700); err != nil {
			return cp, err
		}
		for _, out := range []struct {
			name string
			w    *io.Writer
		}{{"etcd", &etcd.Out}, {"etcd", &etcd.Err}, {"kube-apiserver", &apiServer.Out}, {"kube-apiserver", &apiServer.Err}} {
			f, err := os.OpenFile( //nolint:gosec // a fixed name under the data directory the caller chose
				filepath.Join(logs, out.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
			if err != nil {
				return cp, err
			}
			cp.logs = append(cp.logs, f)
			*out.w = f
		}
	}
	// Both children die with this process (see childSpec).
	if etcd.Path, err = wrapChild(cp.temp, "etcd", filepath.Join(assets, "etcd"), pidFile("etcd")); err != nil {
		return cp, err
	}
	if apiServer.Path, err = wrapChild(cp.temp, "kube-apiserver", filepath.Join(assets, "kube-apiserver"), pidFile("kube-apiserver")); err != nil {
		return cp, err
	}
	// Bind everything to loopback only, and advertise loopback: without an
	// explicit advertise address kube-apiserver derives one from the
	// default route, and refuses to start on a machine without one (an
	// offline laptop).
	apiServer.Address = "127.0.0.1"
	apiServer.Configure().Set("bind-address", "127.0.0.1")
	apiServer.Configure().Set("advertise-address", "127.0.0.1")

	cp.env = env
	cp.Config, err = startEnv(env)
	if err != nil {
		if opts.DataDir != "" {
			err = fmt.Errorf("%w (their output is in %s)", err, filepath.Join(opts.DataDir, "logs"))
		}
		return cp, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	cp.Client, err = client.New(cp.Config, client.Options{Scheme: cp.Scheme})
	if err != nil {
		return cp, err
	}

	if err := cp.ensureNamespace(ctx, cp.OperatorNamespace); err != nil {
		return cp, err
	}
	if err := cp.installRBAC(ctx); err != nil {
		return cp, fmt.Errorf("installing RBAC: %w", err)
	}

	// cert-manager's admission, as its webhook enforces it in a cluster.
	cp.admission, err = cp.startCertManagerAdmission(ctx, env.WebhookInstallOptions.LocalServingCertDir, env.WebhookInstallOptions.LocalServingCAData)
	if err != nil {
		return cp, err
	}

	// cert-manager runs as its own user, with the permissions its Helm
	// chart grants its controller, as it would in a cluster.
	kubeconfig, err := cp.Kubeconfig(CertManagerUsername, "system:serviceaccounts", "system:serviceaccounts:cert-manager", "system:authenticated")
	if err != nil {
		return cp, err
	}
	kubeconfigPath := filepath.Join(cp.temp, "cert-manager.kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		return cp, err
	}
	cp.cm, err = startCertManager(ctx, log.WithName("cert-manager"), kubeconfigPath, cp.OperatorNamespace)
	if err != nil {
		return cp, err
	}

	if err := cp.bootstrapRootIssuer(ctx); err != nil {
		return cp, fmt.Errorf("bootstrapping the root ClusterIssuer: %w", err)
	}
	return cp, nil
}

// startEnv starts envtest, turning its panics (it panics on some start-up
// failures) into errors so that the caller's cleanup stops what did start.
func startEnv(env *envtest.Environment) (cfg *rest.Config, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("starting the control plane: %v", r)
		}
	}()
	return env.Start()
}

// Stop stops cert-manager and the admission emulation, then kube-apiserver and etcd. Persistent data
// in Options.DataDir is kept.
func (cp *ControlPlane) Stop() error {
	if cp == nil {
		return nil
	}
	if cp.cm != nil {
		cp.cm.stop()
		cp.cm = nil
	}
	if cp.admission != nil {
		cp.admission.stop()
		cp.admission = nil
	}
	var errs []error
	if cp.env != nil {
		err := cp.env.Stop()
		if err == nil && cp.dataDir != "" {
			// Stopped: nothing for the next start to end.
			for _, name := range childNames {
				_ = os.Remove(pidFilePath(cp.dataDir, name))
			}
		}
		errs = append(errs, err)
		cp.env = nil
	}
	for _, f := range cp.logs {
		errs = append(errs, f.Close())
	}
	cp.logs = nil
	if cp.temp != "" {
		errs = append(errs, os.RemoveAll(cp.temp))
		cp.temp = ""
	}
	return errors.Join(errs...)
}

// AddUser provisions a client-certificate user with the given groups and
// returns a rest.Config that authenticates as that user. Nothing is granted:
// what the user may do comes from RBAC.
func (cp *ControlPlane) AddUser(name string, groups ...string) (*rest.Config, error) {
	u, err := cp.env.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return nil, err
	}
	return u.Config(), nil
}

// Kubeconfig returns a kubeconfig for a user with the given groups.
func (cp *ControlPlane) Kubeconfig(name string, groups ...string) ([]byte, error) {
	u, err := cp.env.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return nil, err
	}
	return u.KubeConfig()
}

// WebhookServer returns a webhook server listening where the installed
// webhook configuration points, with the serving certificate the API server
// trusts.
func (cp *ControlPlane) WebhookServer() webhook.Server {
	o := cp.env.WebhookInstallOptions
	return webhook.NewServer(webhook.Options{
		Host:    o.LocalServingHost,
		Port:    o.LocalServingPort,
		CertDir: o.LocalServingCertDir,
	})
}

func (cp *ControlPlane) ensureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := cp.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// bootstrapRootIssuer creates a self-signed ClusterIssuer, a root CA
// Certificate from it, and the root CA ClusterIssuer backed by that
// certificate. It approves the root's CertificateRequest itself: this is the
// platform engineer's bootstrap, not something the Custody manager approves.
func (cp *ControlPlane) bootstrapRootIssuer(ctx context.Context) error {
	selfSigned := &cmapi.ClusterIssuer{
		ObjectMeta: metav1.ObjectMeta{Name: cp.RootIssuer + "-selfsigned"},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
	}
	secretName := cp.RootIssuer + "-ca"
	rootCert := &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: cp.OperatorNamespace},
		Spec: cmapi.CertificateSpec{
			IsCA:       true,
			CommonName: "Custody root CA (development)",
			SecretName: secretName,
			Duration:   &metav1.Duration{Duration: 10 * 365 * 24 * time.Hour},
			PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
			IssuerRef:  cmmeta.IssuerReference{Name: selfSigned.Name, Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"},
		},
	}
	root := &cmapi.ClusterIssuer{
		ObjectMeta: metav1.ObjectMeta{Name: cp.RootIssuer},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: secretName}}},
	}
	for _, obj := range []client.Object{selfSigned, rootCert, root} {
		if err := cp.Client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}

	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := cp.approveRootRequests(ctx, secretName); err != nil {
			return false, err
		}
		ci := &cmapi.ClusterIssuer{}
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(root), ci); err != nil {
			return false, err
		}
		for _, c := range ci.Status.Conditions {
			if c.Type == cmapi.IssuerConditionReady && c.Status == cmmeta.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// approveRootRequests approves the pending CertificateRequests of the root
// CA Certificate named certName.
func (cp *ControlPlane) approveRootRequests(ctx context.Context, certName string) error {
	var list cmapi.CertificateRequestList
	if err := cp.Client.List(ctx, &list, client.InNamespace(cp.OperatorNamespace)); err != nil {
		return err
	}
	for i := range list.Items {
		cr := &list.Items[i]
		if cr.Annotations[cmapi.CertificateNameKey] != certName || decided(cr) {
			continue
		}
		cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
			Type:               cmapi.CertificateRequestConditionApproved,
			Status:             cmmeta.ConditionTrue,
			Reason:             "CustodyDevBootstrap",
			Message:            "root CA of the development control plane",
			LastTransitionTime: ptrNow(),
		})
		if err := cp.Client.Status().Update(ctx, cr); err != nil && !apierrors.IsConflict(err) {
			return err
		}
	}
	return nil
}

func decided(cr *cmapi.CertificateRequest) bool {
	for _, c := range cr.Status.Conditions {
		if c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied {
			return true
		}
	}
	return false
}

func ptrNow() *metav1.Time {
	t := metav1.Now()
	return &t
}

// servingPort picks a free port for the webhook server below the kernel's
// ephemeral range. The server is stopped and started again (a manager
// restart, one manager per test): a port inside the range could meanwhile
// become the local port of any outgoing connection, and the restarted
// server would then fail to bind it.
func servingPort() (int, error) {
	low := 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	from := max(1024, low-10000)
	for range 100 {
		p := from + rand.IntN(low-from) //nolint:gosec // a port number, not a secret
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free port for the webhook server in %d-%d", from, low-1)
}
