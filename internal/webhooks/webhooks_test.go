package webhooks

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/factory"
)

// userWritableFields are the DeviceSpec fields the ERP writes. Every other
// field must be in managerOnlyFields.
var userWritableFields = []string{"serialNumber", "model", "identity", "claimCode", "sale", "claimPolicy", "decommissioned"}

func specFields() []reflect.StructField {
	t := reflect.TypeOf(custodyv1alpha1.DeviceSpec{})
	out := make([]reflect.StructField, 0, t.NumField())
	for i := range t.NumField() {
		out = append(out, t.Field(i))
	}
	return out
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name
}

// TestManagerOnlyFieldsCoverDeviceSpec: every DeviceSpec field is either
// written by the ERP or in the one list of manager-only fields, never both,
// so that a new field cannot be forgotten.
func TestManagerOnlyFieldsCoverDeviceSpec(t *testing.T) {
	manager := map[string]bool{}
	for _, f := range managerOnlyFields {
		if manager[f.name] {
			t.Errorf("%s is listed twice", f.name)
		}
		manager[f.name] = true
	}
	seen := map[string]bool{}
	for _, f := range specFields() {
		name := jsonName(f)
		seen[name] = true
		switch user := slices.Contains(userWritableFields, name); {
		case user && manager[name]:
			t.Errorf("spec.%s is both user-writable and manager-only", name)
		case !user && !manager[name]:
			t.Errorf("spec.%s is neither in managerOnlyFields nor in userWritableFields: decide who writes it", name)
		}
	}
	for name := range manager {
		if !seen[name] {
			t.Errorf("managerOnlyFields names spec.%s, which DeviceSpec does not have", name)
		}
	}
}

// withField returns a copy of spec with the field named json set to a
// non-zero value, built by reflection so that a new field is covered.
func withField(t *testing.T, spec custodyv1alpha1.DeviceSpec, json string) custodyv1alpha1.DeviceSpec {
	t.Helper()
	v := reflect.ValueOf(&spec).Elem()
	for i, f := range specFields() {
		if jsonName(f) != json {
			continue
		}
		fv := v.Field(i)
		switch fv.Kind() {
		case reflect.Pointer:
			fv.Set(reflect.New(fv.Type().Elem()))
		case reflect.Slice:
			fv.Set(reflect.Append(reflect.MakeSlice(fv.Type(), 0, 1), reflect.ValueOf("sha256:00").Convert(fv.Type().Elem())))
		default:
			t.Fatalf("spec.%s: teach withField to set a %s", json, fv.Kind())
		}
		return spec
	}
	t.Fatalf("no field spec.%s", json)
	return spec
}

func as(user string) context.Context {
	return admission.NewContextWithRequest(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UserInfo: authenticationv1.UserInfo{Username: user},
	}})
}

// TestManagerOnlyFieldsOnCreateAndUpdate: each manager-only field, set at
// creation or changed (added, altered, removed) by an update, is refused
// for the ERP and for a cluster admin with a message naming the field; the
// manager may write it.
func TestManagerOnlyFieldsOnCreateAndUpdate(t *testing.T) {
	rec, err := factory.Manufacture("XR200", "SN-MANAGER-ONLY")
	if err != nil {
		t.Fatal(err)
	}
	const managerUser = "system:serviceaccount:custody-system:custody-manager"
	v := &DeviceValidator{Options: Options{ManagerUsernames: []string{managerUser}}}
	plain := rec.Device.DeepCopy()

	for _, f := range managerOnlyFields {
		path := "spec." + f.name
		withIt := plain.DeepCopy()
		withIt.Spec = withField(t, withIt.Spec, f.name)
		if !f.set(&withIt.Spec) {
			t.Fatalf("%s: set() does not see the field set by reflection", path)
		}
		for _, user := range []string{"erp", "kubernetes-admin"} {
			ctx := as(user)
			_, err := v.ValidateCreate(ctx, withIt)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "only the Custody manager") {
				t.Errorf("%s: create by %s: %v, want a refusal naming %s", path, user, err, path)
			}
			for name, c := range map[string]struct{ o, n *custodyv1alpha1.Device }{
				"add": {plain, withIt}, "remove": {withIt, plain},
			} {
				_, err := v.ValidateUpdate(ctx, c.o, c.n)
				if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "only the Custody manager") {
					t.Errorf("%s: update (%s) by %s: %v, want a refusal naming %s", path, name, user, err, path)
				}
			}
			if _, err := v.ValidateUpdate(ctx, withIt, withIt.DeepCopy()); err != nil {
				t.Errorf("%s: an update by %s that leaves the field alone was refused: %v", path, user, err)
			}
		}
		ctx := as(managerUser)
		if _, err := v.ValidateCreate(ctx, withIt); err != nil {
			t.Errorf("%s: the manager may create with it: %v", path, err)
		}
		for _, c := range [][2]*custodyv1alpha1.Device{{plain, withIt}, {withIt, plain}} {
			if _, err := v.ValidateUpdate(ctx, c[0], c[1]); err != nil {
				t.Errorf("%s: the manager may change it: %v", path, err)
			}
		}
	}
}
