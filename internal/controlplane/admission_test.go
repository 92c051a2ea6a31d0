package controlplane

import (
	"encoding/json"
	"reflect"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestCertificateRequestAdmission: the rules of the emulated cert-manager
// admission, case by case.
func TestCertificateRequestAdmission(t *testing.T) {
	user := authenticationv1.UserInfo{Username: "alice", UID: "u1", Groups: []string{"g1", "system:authenticated"}, Extra: map[string]authenticationv1.ExtraValue{"scopes": {"a"}}}

	// Create: whatever the request says, the requester is stamped.
	forged := map[string]any{"spec": map[string]any{"username": "system:serviceaccount:cert-manager:cert-manager", "uid": "x", "groups": []any{"system:masters"}, "extra": map[string]any{"k": []any{"v"}}, "isCA": true}}
	raw, err := stampIdentity(forged, user)
	if err != nil {
		t.Fatal(err)
	}
	cr := &cmapi.CertificateRequest{}
	if err := json.Unmarshal(raw, cr); err != nil {
		t.Fatal(err)
	}
	if cr.Spec.Username != "alice" || cr.Spec.UID != "u1" || !reflect.DeepEqual(cr.Spec.Groups, user.Groups) || !reflect.DeepEqual(cr.Spec.Extra, map[string][]string{"scopes": {"a"}}) || !cr.Spec.IsCA {
		t.Fatalf("stamped spec %+v", cr.Spec)
	}
	if errs := validateCreate(user, cr); len(errs) > 0 {
		t.Fatalf("stamped request refused: %v", errs)
	}
	for name, mutate := range map[string]func(*cmapi.CertificateRequest){
		"other username": func(c *cmapi.CertificateRequest) { c.Spec.Username = "system:serviceaccount:cert-manager:cert-manager" },
		"other uid":      func(c *cmapi.CertificateRequest) { c.Spec.UID = "u2" },
		"extra group":    func(c *cmapi.CertificateRequest) { c.Spec.Groups = append(c.Spec.Groups, "system:masters") },
		"no extra":       func(c *cmapi.CertificateRequest) { c.Spec.Extra = nil },
		"approved twice": func(c *cmapi.CertificateRequest) {
			c.Status.Conditions = []cmapi.CertificateRequestCondition{approved(), approved()}
		},
	} {
		c := cr.DeepCopy()
		mutate(c)
		if errs := validateCreate(user, c); len(errs) == 0 {
			t.Errorf("create with %s accepted", name)
		}
	}

	// Update: identity, spec and cert-manager annotations are immutable;
	// decisions are final and well-formed.
	base := cr.DeepCopy()
	base.Annotations = map[string]string{cmapi.CertificateNameKey: "ca", "other": "x"}
	denied := base.DeepCopy()
	denied.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue, Reason: "No"}}
	ready := cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionReady, Status: cmmeta.ConditionFalse, Reason: "Denied"}
	for _, tc := range []struct {
		name   string
		old    *cmapi.CertificateRequest
		mutate func(*cmapi.CertificateRequest)
		ok     bool
	}{
		{"approve an undecided request", base, func(c *cmapi.CertificateRequest) { c.Status.Conditions = append(c.Status.Conditions, approved()) }, true},
		{"deny an undecided request", base, func(c *cmapi.CertificateRequest) { c.Status.Conditions = denied.Status.Conditions }, true},
		{"add Ready next to Denied", denied, func(c *cmapi.CertificateRequest) { c.Status.Conditions = append(c.Status.Conditions, ready) }, true},
		{"change another annotation", base, func(c *cmapi.CertificateRequest) { c.Annotations["other"] = "y" }, true},
		{"replace Denied with Approved", denied, func(c *cmapi.CertificateRequest) {
			c.Status.Conditions = []cmapi.CertificateRequestCondition{approved()}
		}, false},
		{"add Approved next to Denied", denied, func(c *cmapi.CertificateRequest) { c.Status.Conditions = append(c.Status.Conditions, approved()) }, false},
		{"remove Denied", denied, func(c *cmapi.CertificateRequest) { c.Status.Conditions = nil }, false},
		{"change Denied's reason", denied, func(c *cmapi.CertificateRequest) { c.Status.Conditions[0].Reason = "Yes" }, false},
		{"set Denied False", denied, func(c *cmapi.CertificateRequest) { c.Status.Conditions[0].Status = cmmeta.ConditionFalse }, false},
		{"approve with status False", base, func(c *cmapi.CertificateRequest) {
			a := approved()
			a.Status = cmmeta.ConditionFalse
			c.Status.Conditions = append(c.Status.Conditions, a)
		}, false},
		{"change the username", base, func(c *cmapi.CertificateRequest) { c.Spec.Username = "system:serviceaccount:cert-manager:cert-manager" }, false},
		{"change the groups", base, func(c *cmapi.CertificateRequest) { c.Spec.Groups = []string{"system:masters"} }, false},
		{"change the uid", base, func(c *cmapi.CertificateRequest) { c.Spec.UID = "u2" }, false},
		{"change the extra", base, func(c *cmapi.CertificateRequest) { c.Spec.Extra = nil }, false},
		{"change the CSR", base, func(c *cmapi.CertificateRequest) { c.Spec.Request = []byte("other") }, false},
		{"change isCA", base, func(c *cmapi.CertificateRequest) { c.Spec.IsCA = false }, false},
		{"change the certificate name", base, func(c *cmapi.CertificateRequest) { c.Annotations[cmapi.CertificateNameKey] = "other" }, false},
		{"remove the certificate name", base, func(c *cmapi.CertificateRequest) { delete(c.Annotations, cmapi.CertificateNameKey) }, false},
		{"add a cert-manager annotation", base, func(c *cmapi.CertificateRequest) { c.Annotations[cmapi.CertificateRequestRevisionAnnotationKey] = "9" }, false},
	} {
		c := tc.old.DeepCopy()
		tc.mutate(c)
		errs := validateUpdate(tc.old, c)
		if ok := len(errs) == 0; ok != tc.ok {
			t.Errorf("%s: accepted %v, want %v (%v)", tc.name, ok, tc.ok, errs)
		}
	}

	if !decisionAdded(base, withConditions(base, approved())) || !decisionAdded(base, denied) || decisionAdded(denied, withConditions(denied, ready)) {
		t.Error("decisionAdded is wrong")
	}
	if got := signerNames("tenant-a", "custody-system", schema.GroupResource{Group: "cert-manager.io", Resource: "issuers"}, true); !reflect.DeepEqual(got, []string{"issuers.cert-manager.io/*", "issuers.cert-manager.io/custody-system.tenant-a"}) {
		t.Errorf("namespaced signer names %v", got)
	}
	if got := signerNames("custody-root", "custody-system", schema.GroupResource{Group: "cert-manager.io", Resource: "clusterissuers"}, false); !reflect.DeepEqual(got, []string{"clusterissuers.cert-manager.io/*", "clusterissuers.cert-manager.io/custody-root"}) {
		t.Errorf("cluster signer names %v", got)
	}
}

func approved() cmapi.CertificateRequestCondition {
	return cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue, Reason: "Yes"}
}

func withConditions(cr *cmapi.CertificateRequest, conds ...cmapi.CertificateRequestCondition) *cmapi.CertificateRequest {
	c := cr.DeepCopy()
	c.Status.Conditions = append(c.Status.Conditions, conds...)
	return c
}
