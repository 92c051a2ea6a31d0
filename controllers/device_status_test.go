package controllers

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
)

func TestDeviceStatus(t *testing.T) {
	code, _ := claimcode.Generate()
	verifier, err := claimcode.NewVerifier(code)
	if err != nil {
		t.Fatal(err)
	}
	withCode := func() *custodyv1alpha1.Device {
		return &custodyv1alpha1.Device{Spec: custodyv1alpha1.DeviceSpec{ClaimCode: &custodyv1alpha1.DeviceClaimCode{Verifier: verifier}}}
	}
	bound := func(d *custodyv1alpha1.Device) *custodyv1alpha1.Device {
		d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "c", UID: "u"}
		return d
	}
	acme := &custodyv1alpha1.Tenant{}
	consumed := withCode()
	consumed.Spec.ConsumedClaimCodes = []string{claimcode.Digest(verifier)}
	weak := withCode()
	weak.Spec.ClaimCode.Verifier = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
	decommissioned := withCode()
	decommissioned.Spec.Decommissioned = true
	releasedNoCode := &custodyv1alpha1.Device{Status: custodyv1alpha1.DeviceStatus{History: []custodyv1alpha1.CustodyRecord{{Type: custodyv1alpha1.CustodyEventReleased}}}}

	for _, tt := range []struct {
		name      string
		d         *custodyv1alpha1.Device
		tenant    *custodyv1alpha1.Tenant
		phase     custodyv1alpha1.DevicePhase
		claimable string // reason of Claimable
		ready     bool
	}{
		{"claimable", withCode(), nil, custodyv1alpha1.DevicePhaseAvailable, custodyv1alpha1.DeviceReasonClaimable, true},
		{"no code", &custodyv1alpha1.Device{}, nil, custodyv1alpha1.DevicePhaseAvailable, custodyv1alpha1.DeviceReasonNoClaimCode, true},
		{"weak verifier", weak, nil, custodyv1alpha1.DevicePhaseAvailable, custodyv1alpha1.DeviceReasonNoClaimCode, true},
		{"bound", bound(withCode()), acme, custodyv1alpha1.DevicePhaseBound, custodyv1alpha1.DeviceReasonBound, true},
		{"bound to a missing tenant", bound(withCode()), nil, custodyv1alpha1.DevicePhaseBound, custodyv1alpha1.DeviceReasonBound, false},
		{"code used", consumed, nil, custodyv1alpha1.DevicePhaseReleased, custodyv1alpha1.DeviceReasonClaimCodeConsumed, true},
		{"released without code", releasedNoCode, nil, custodyv1alpha1.DevicePhaseReleased, custodyv1alpha1.DeviceReasonNoClaimCode, true},
		{"decommissioned", decommissioned, nil, custodyv1alpha1.DevicePhaseDecommissioned, custodyv1alpha1.DeviceReasonDecommissioned, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			DeviceStatus(tt.d, tt.tenant)
			if tt.d.Status.Phase != tt.phase {
				t.Errorf("phase %s, want %s", tt.d.Status.Phase, tt.phase)
			}
			c := meta.FindStatusCondition(tt.d.Status.Conditions, custodyv1alpha1.DeviceConditionClaimable)
			if c == nil || c.Reason != tt.claimable {
				t.Errorf("Claimable %+v, want reason %s", c, tt.claimable)
			}
			if got := meta.IsStatusConditionTrue(tt.d.Status.Conditions, custodyv1alpha1.ConditionReady); got != tt.ready {
				t.Errorf("Ready %v, want %v", got, tt.ready)
			}
		})
	}
}
