package controlplane

import (
	"context"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestControlPlaneIssuesOnlyApprovedRequests starts the real control plane
// and checks that cert-manager is running without its built-in approver:
// a CertificateRequest stays unsigned until someone approves it.
func TestControlPlaneIssuesOnlyApprovedRequests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	}()

	cert := &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: cp.OperatorNamespace},
		Spec: cmapi.CertificateSpec{
			CommonName: "probe", SecretName: "probe",
			PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm},
			IssuerRef:  cmmeta.IssuerReference{Name: cp.RootIssuer, Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"},
		},
	}
	if err := cp.Client.Create(ctx, cert); err != nil {
		t.Fatal(err)
	}
	var cr *cmapi.CertificateRequest
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var list cmapi.CertificateRequestList
		if err := cp.Client.List(ctx, &list, client.InNamespace(cp.OperatorNamespace)); err != nil {
			return false, err
		}
		for i := range list.Items {
			if list.Items[i].Annotations[cmapi.CertificateNameKey] == "probe" {
				cr = &list.Items[i]
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("no CertificateRequest for the probe Certificate: %v", err)
	}

	// Without approval nothing is signed.
	if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(cr), cr); err != nil {
		t.Fatal(err)
	}
	if decided(cr) || len(cr.Status.Certificate) > 0 {
		t.Fatalf("request was decided or signed without anyone approving it: %+v", cr.Status)
	}

	if err := cp.approveRootRequests(ctx, "probe"); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(cr), cr); err != nil {
			return false, err
		}
		return len(cr.Status.Certificate) > 0, nil
	}); err != nil {
		t.Fatalf("approved request was not signed: %v", err)
	}
}
