package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/kubectlcustody"
	"github.com/custody-dev/custody/internal/testtools"
	"github.com/custody-dev/custody/pkg/protocol"
)

// kubectlCustody runs `kubectl custody args...` in-process with a cluster
// admin's kubeconfig (personas are chosen with --as, as with kubectl), and
// stdin as its standard input.
type kubectlCustody struct {
	kubeconfig string
}

func newKubectlCustody(t *testing.T) *kubectlCustody {
	t.Helper()
	kc, err := cp.Kubeconfig("kubectl-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return &kubectlCustody{kubeconfig: path}
}

func (k *kubectlCustody) run(stdin string, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	err := kubectlcustody.Run(context.Background(), append([]string{"--kubeconfig", k.kubeconfig}, args...),
		kubectlcustody.Streams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut})
	return out.String(), errOut.String(), err
}

func (k *kubectlCustody) ok(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := k.run(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl custody %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func claimsIn(t *testing.T, ns string) []custodyv1alpha1.Claim {
	t.Helper()
	var l custodyv1alpha1.ClaimList
	if err := admin.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func secretsIn(t *testing.T, ns string) []corev1.Secret {
	t.Helper()
	var l corev1.SecretList
	if err := admin.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// TestKubectlCustody drives every command of the plugin as the personas of
// the README: a tenant Operator (bob) and Admin (alice), another tenant's
// Admin (eve), and support staff (sam), impersonated with --as.
func TestKubectlCustody(t *testing.T) {
	policy := claim.DefaultPolicy
	policy.MaxFailedAttempts = 2
	startManager(t, func(o *controllers.Options) { o.ClaimPolicy = policy })
	g := startGateway(t)
	const alice, bob, eve, sam = "alice@kc.example", "bob@kc.example", "eve@kc.example", "sam@kc.example"
	acme := newTenant(t,
		custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: alice, Role: custodyv1alpha1.TenantRoleAdmin},
		custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: bob, Role: custodyv1alpha1.TenantRoleOperator})
	// Globex's namespace is not its name: the plugin names tenants, not namespaces.
	globex := newTenantWith(t, func(tn *custodyv1alpha1.Tenant) {
		tn.Spec.Namespace = uniq("globex-ns")
		tn.Spec.Members = []custodyv1alpha1.TenantMember{{Kind: custodyv1alpha1.MemberKindUser, Name: eve, Role: custodyv1alpha1.TenantRoleAdmin}}
	})
	bindSupport(t, sam)
	acmeNS, globexNS := acme.Status.Namespace, globex.Status.Namespace
	if globexNS == globex.Name {
		t.Fatal("globex's namespace should differ from its name")
	}
	k := newKubectlCustody(t)
	rec := newDevice(t)
	serial, model, code := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()
	claimName := strings.ToLower(serial)
	asBob := []string{"-n", acmeNS, "--as", bob}
	noCode := func(t *testing.T, outputs ...string) {
		t.Helper()
		for _, o := range outputs {
			if strings.Contains(o, code) || strings.Contains(o, strings.ReplaceAll(code, "-", "")) {
				t.Fatalf("the claim code was printed: %q", o)
			}
		}
	}

	t.Run("the code is never taken from argv", func(t *testing.T) {
		for _, args := range [][]string{
			{"claim", serial, "--model", model, "--code", code},
			{"claim", serial, "--model", model, "--claim-code=" + code},
			{"claim", serial, code, "--model", model},
		} {
			out, errOut, err := k.run(code+"\n", append(args, asBob...)...)
			if err == nil || !strings.Contains(err.Error(), "never taken from the command line") {
				t.Fatalf("%v: want a refusal naming the command line, got %v", args, err)
			}
			noCode(t, out, errOut, err.Error())
		}
		if n := len(claimsIn(t, acmeNS)); n != 0 {
			t.Fatalf("a refused command created %d Claims", n)
		}
	})

	t.Run("a code typed as the device argument is refused before anything is created", func(t *testing.T) {
		for _, args := range [][]string{
			{"claim", code, "--model", model},
			{"claim", strings.ToLower(code), "--model", model},
			{"claim", strings.ToLower(model) + "." + code},
		} {
			out, errOut, err := k.run(code+"\n", append(args, asBob...)...)
			if err == nil || !strings.Contains(err.Error(), "never taken from the command line") {
				t.Fatalf("%v: want a refusal naming the command line, got %v", args, err)
			}
			all := strings.ToLower(out + errOut + err.Error())
			noCode(t, all, strings.ToUpper(all))
		}
		if n := len(claimsIn(t, acmeNS)); n != 0 {
			t.Fatalf("a refused command created %d Claims", n)
		}
		for _, sec := range secretsIn(t, acmeNS) {
			if strings.Contains(strings.ToUpper(sec.Name), strings.ReplaceAll(code, "-", "")) || strings.Contains(strings.ToUpper(sec.Name), code) {
				t.Fatalf("a refused command left Secret %s, named after the code", sec.Name)
			}
		}
	})

	t.Run("a typo is caught before anything is created", func(t *testing.T) {
		typo := []byte(code)
		last := len(typo) - 1
		typo[last] = map[bool]byte{true: '2', false: '3'}[typo[last] == '3']
		_, _, err := k.run(string(typo)+"\n", append([]string{"claim", serial, "--model", model}, asBob...)...)
		if err == nil || !strings.Contains(err.Error(), "check character") {
			t.Fatalf("want a typo message, got %v", err)
		}
		if n := len(claimsIn(t, acmeNS)); n != 0 {
			t.Fatalf("a malformed code created %d Claims", n)
		}
	})

	t.Run("--dry-run=server creates nothing", func(t *testing.T) {
		secrets := len(secretsIn(t, acmeNS))
		out := k.ok(t, code+"\n", append([]string{"claim", serial, "--model", model, "--dry-run=server"}, asBob...)...)
		if !strings.Contains(out, "claim.custody.dev/"+claimName+" created (server dry run)") {
			t.Fatalf("unexpected output %q", out)
		}
		noCode(t, out)
		if n := len(claimsIn(t, acmeNS)); n != 0 {
			t.Fatalf("a server dry run created %d Claims", n)
		}
		if n := len(secretsIn(t, acmeNS)); n != secrets {
			t.Fatalf("a server dry run created %d Secrets", n-secrets)
		}
		// The server did check it: a Claim the API refuses fails the dry run.
		if _, _, err := k.run(code+"\n", append([]string{"claim", serial, "--model", model, "--dry-run=server", "--name", "Not_A_Name"}, asBob...)...); err == nil {
			t.Fatal("a server dry run of an invalid Claim succeeded")
		}
	})

	t.Run("a wrong code and an unknown serial get the same answer", func(t *testing.T) {
		wrong := otherCode(t, rec.Code).String()
		var answers []string
		for _, s := range []string{serial, "SN-KC-UNKNOWN"} {
			name := "guess-" + strings.ToLower(s)
			out, _, err := k.run(wrong+"\n", "claim", s, "--model", model, "--name", name, "-n", globexNS, "--as", eve)
			if err == nil || !strings.Contains(err.Error(), "denied") || !strings.Contains(out, "claim "+name+":") {
				t.Fatalf("%s: want a denial, got %v (%s)", s, err, out)
			}
			answers = append(answers, out[strings.Index(out, "claim "+name+":")+len("claim "+name):])
			// The denied Claim owns its code's Secret: deleting the Claim
			// deletes the code with it.
			cl, sec := &custodyv1alpha1.Claim{}, &corev1.Secret{}
			if err := admin.Get(context.Background(), client.ObjectKey{Namespace: globexNS, Name: name}, cl); err != nil {
				t.Fatal(err)
			}
			if err := admin.Get(context.Background(), client.ObjectKey{Namespace: globexNS, Name: name + "-code"}, sec); err != nil {
				t.Fatal(err)
			}
			if refs := sec.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Claim" || refs[0].UID != cl.UID {
				t.Fatalf("the code's Secret is owned by %+v, not its Claim %s", refs, cl.UID)
			}
		}
		if answers[0] != answers[1] || !strings.Contains(answers[0], "Denied (ClaimNotVerified)") {
			t.Fatalf("the answers differ or are not ClaimNotVerified:\n%q\n%q", answers[0], answers[1])
		}
	})

	t.Run("a tenant locked out is told at once", func(t *testing.T) {
		wrong := otherCode(t, rec.Code).String()
		for i, want := range []string{"Denied (ClaimNotVerified)", "Pending (TooManyFailedAttempts)"} {
			name := fmt.Sprintf("again-%d", i)
			out, _, err := k.run(wrong+"\n", "claim", "SN-KC-UNKNOWN", "--model", model, "--name", name, "-n", globexNS, "--as", eve, "--timeout", "30s")
			if !strings.Contains(out, "claim "+name+": "+want) {
				t.Fatalf("attempt %d: want %s, got %q", i+2, want, out)
			}
			// Denied is an error; Pending is "not decided yet" (exit 2), never success.
			if undecided := errors.Is(err, kubectlcustody.ErrUndecided); err == nil || undecided != (i == 1) {
				t.Fatalf("attempt %d: error %v (undecided %v)", i+2, err, undecided)
			}
		}
	})

	t.Run("--dry-run=client says what it would create", func(t *testing.T) {
		out := k.ok(t, code+"\n", append([]string{"claim", serial, "--model", model, "--dry-run=client", "--release-policy", "Release"}, asBob...)...)
		for _, want := range []string{"claim.custody.dev/" + claimName + " created (dry run): " + model + " " + serial, "secret " + claimName + "-code", "release policy Release", "not shown"} {
			if !strings.Contains(out, want) {
				t.Fatalf("the dry run does not say %q: %q", want, out)
			}
		}
		noCode(t, out)
		out = k.ok(t, "", append([]string{"claim", serial, "--model", model, "--dry-run=client", "--possession"}, asBob...)...)
		if !strings.Contains(out, "claim.custody.dev/"+claimName+" created (dry run): "+model+" "+serial+" for tenant namespace "+acmeNS+", by possession") || !strings.Contains(out, "release policy Retain") {
			t.Fatalf("the possession dry run does not say what it would create: %q", out)
		}
		if n := len(claimsIn(t, acmeNS)); n != 0 {
			t.Fatalf("a client dry run created %d Claims", n)
		}
	})

	t.Run("a Claim the API server refuses leaves no code behind", func(t *testing.T) {
		// A quota of no Claims: the API server refuses the Claim after
		// the code's Secret was created.
		quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: acmeNS, Name: "no-claims"},
			Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{"count/claims.custody.dev": resource.MustParse("0")}}}
		if err := admin.Create(context.Background(), quota); err != nil {
			t.Fatal(err)
		}
		// What kube-controller-manager's quota controller would write.
		quota.Status = corev1.ResourceQuotaStatus{Hard: quota.Spec.Hard, Used: corev1.ResourceList{"count/claims.custody.dev": resource.MustParse("0")}}
		if err := admin.Status().Update(context.Background(), quota); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the quota to refuse Claims", func() bool {
			probe := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: acmeNS, Name: "quota-probe"},
				Spec: custodyv1alpha1.ClaimSpec{SerialNumber: serial, Model: model, Possession: &custodyv1alpha1.PossessionProof{}}}
			return apierrors.IsForbidden(admin.Create(context.Background(), probe, client.DryRunAll))
		})
		refused := func(who, name string) string {
			t.Helper()
			out, errOut, err := k.run(code+"\n", "claim", serial, "--model", model, "--name", name, "-n", acmeNS, "--as", who)
			if err == nil || !strings.Contains(err.Error(), "creating the Claim") {
				t.Fatalf("%s: want the Claim refused, got %v\n%s%s", who, err, out, errOut)
			}
			noCode(t, out, errOut, err.Error())
			if n := len(claimsIn(t, acmeNS)); n != 0 {
				t.Fatalf("a refused Claim was created (%d)", n)
			}
			return errOut
		}
		// Bob, an Operator, may not delete Secrets: the Secret is emptied,
		// and he is told so, and how to claim again meanwhile.
		errOut := refused(bob, "refused")
		// Alice, an Admin, may: the Secret is deleted, and she is told so.
		adminErrOut := refused(alice, "refused-by-admin")
		if err := admin.Delete(context.Background(), quota); err != nil {
			t.Fatal(err)
		}
		left := readSecret(t, acmeNS, "refused-code")
		if len(left.Data) != 0 || !strings.Contains(errOut, "no longer holds the claim code") || !strings.Contains(errOut, "--name") {
			t.Fatalf("the refused Claim's Secret still holds %d keys; stderr %q", len(left.Data), errOut)
		}
		if err := admin.Delete(context.Background(), left); err != nil {
			t.Fatal(err)
		}
		if err := admin.Get(context.Background(), client.ObjectKey{Namespace: acmeNS, Name: "refused-by-admin-code"}, &corev1.Secret{}); !apierrors.IsNotFound(err) || !strings.Contains(adminErrOut, "refused-by-admin-code that held the claim code was deleted") {
			t.Fatalf("an Admin's refused Claim: the Secret is %v; stderr %q", err, adminErrOut)
		}
	})

	t.Run("claim reads the code from stdin and waits for the decision", func(t *testing.T) {
		// The code's Secret is there when the manager first looks: the
		// Claim never waits for it.
		waitedForSecret := counterSum(t, "custody_claim_decisions_total", "reason", custodyv1alpha1.ClaimReasonSecretNotFound)
		out, errOut, err := k.run(code+"\n", append([]string{"claim", serial, "--model", model}, asBob...)...)
		if err != nil {
			t.Fatalf("%v\n%s%s", err, out, errOut)
		}
		if n := counterSum(t, "custody_claim_decisions_total", "reason", custodyv1alpha1.ClaimReasonSecretNotFound) - waitedForSecret; n != 0 {
			t.Fatalf("the Claim waited %v times for its code's Secret", n)
		}
		noCode(t, out, errOut)
		if !strings.Contains(out, "claim "+claimName+": Bound (Bound)") {
			t.Fatalf("unexpected output %q", out)
		}
		cl := waitPhase(t, &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: acmeNS, Name: claimName}}, custodyv1alpha1.ClaimPhaseBound)
		if cl.Spec.ClaimCode == nil || cl.Spec.ClaimCode.SecretRef.Name != claimName+"-code" {
			t.Fatalf("the Claim does not point at the code's Secret: %+v", cl.Spec.ClaimCode)
		}
	})

	t.Run("claim --possession prints the pairing code", func(t *testing.T) {
		other := newDevice(t)
		out := k.ok(t, "", "claim", other.Device.Name, "--possession", "-n", globexNS, "--as", eve)
		cl := waitPhase(t, &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: globexNS, Name: strings.ToLower(other.Device.Spec.SerialNumber)}}, custodyv1alpha1.ClaimPhaseAwaitingDevice)
		if cl.Status.Pairing == nil || !strings.Contains(out, "custody-device pair --code "+cl.Status.Pairing.Code+")") {
			t.Fatalf("the pairing code is not printed: %q", out)
		}
	})

	// The device enrols, so that it has a certificate, and was seen 23h ago.
	enrollAgent(t, newAgent(t, g, rec))
	waitFor(t, "the Claim's certificate", func() bool {
		cl, err := claimInNamespace(acmeNS, claimName)
		return err == nil && cl.Status.Certificate != nil
	})
	dev := getDevice(t, rec.Device.Name)
	seen := metav1.NewTime(time.Now().Add(-23 * time.Hour))
	patch := client.MergeFrom(dev.DeepCopy())
	dev.Status.LastSeen = &seen
	if err := admin.Status().Patch(context.Background(), dev, patch); err != nil {
		t.Fatal(err)
	}
	certSerial := getDevice(t, rec.Device.Name).Status.Certificates[0].SerialNumber

	t.Run("devices lists the tenant's devices", func(t *testing.T) {
		out, errOut, err := k.run("", append([]string{"devices", "-o", "wide"}, asBob...)...)
		if err != nil {
			t.Fatal(err)
		}
		row := regexp.MustCompile(`(?m)^` + serial + `\s+` + model + `\s+Bound\s+<unknown>\s+\d+h\s+` + acme.Name + `\s+` + regexp.QuoteMeta(rec.Device.Name) + `\s+` + claimName + `\s+` + certSerial + `\s*$`)
		if !strings.HasPrefix(out, "SERIAL ") || !row.MatchString(out) {
			t.Fatalf("bob's devices (want a row like %s):\n%s", row, out)
		}
		if !strings.Contains(errOut, "LAST SEEN needs read access to Devices") {
			t.Fatalf("bob was not told why LAST SEEN is unknown: %q", errOut)
		}
		// Support staff see when it was last seen.
		out = k.ok(t, "", "devices", "-n", acmeNS, "--as", sam)
		if !regexp.MustCompile(`(?m)^` + serial + `\s+` + model + `\s+Bound\s+23h\s+\d+h\s*$`).MatchString(out) {
			t.Fatalf("sam's view of acme:\n%s", out)
		}
	})

	t.Run("devices -A lists every Device for support staff only", func(t *testing.T) {
		out := k.ok(t, "", "devices", "-A", "--as", sam)
		row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(rec.Device.Name) + `\s+` + serial + `\s+` + model + `\s+Bound\s+` + acme.Name + `\s+23h\s+\d+h\s*$`)
		if !row.MatchString(out) {
			t.Fatalf("want a row like %s in:\n%s", row, out)
		}
		if _, _, err := k.run("", "devices", "-A", "--as", bob); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Fatalf("a tenant user listed every Device: %v", err)
		}
	})

	t.Run("-o json and -o yaml print the objects", func(t *testing.T) {
		var claims struct {
			Kind  string
			Items []custodyv1alpha1.Claim
		}
		if err := json.Unmarshal([]byte(k.ok(t, "", append([]string{"devices", "-o", "json"}, asBob...)...)), &claims); err != nil {
			t.Fatal(err)
		}
		if claims.Kind != "List" || len(claims.Items) != 1 || claims.Items[0].Kind != "Claim" || claims.Items[0].Spec.SerialNumber != serial || claims.Items[0].Status.Phase != custodyv1alpha1.ClaimPhaseBound {
			t.Fatalf("unexpected JSON: %+v", claims)
		}
		var devices struct {
			Kind  string
			Items []custodyv1alpha1.Device
		}
		if err := yaml.Unmarshal([]byte(k.ok(t, "", "devices", "-A", "-o", "yaml", "--as", sam)), &devices); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, d := range devices.Items {
			found = found || (d.Name == rec.Device.Name && d.Kind == "Device" && d.Spec.ClaimRef != nil && d.Spec.ClaimRef.Tenant == acme.Name)
		}
		if devices.Kind != "List" || !found {
			t.Fatalf("device %s is not in the YAML list", rec.Device.Name)
		}
	})

	t.Run("history verify", func(t *testing.T) {
		out := k.ok(t, "", "history", "verify", rec.Device.Name, "--as", sam)
		if !regexp.MustCompile(`^` + regexp.QuoteMeta(rec.Device.Name) + `: history intact: entries 1\.\.\d+, head sha256:[0-9a-f]{64}\n$`).MatchString(out) {
			t.Fatalf("unexpected output %q", out)
		}
		// By serial and model, the same.
		if out2 := k.ok(t, "", "history", "verify", serial, "--model", model, "--as", sam); out2 != out {
			t.Fatalf("by serial: %q, by name: %q", out2, out)
		}
		// A wrong anchor is caught.
		if _, _, err := k.run("", "history", "verify", rec.Device.Name, "--as", sam, "--anchor", "1:sha256:"+strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "NOT intact") {
			t.Fatalf("a wrong anchor was not caught: %v", err)
		}
		if _, _, err := k.run("", "history", "verify", rec.Device.Name, "--as", bob); err == nil || !strings.Contains(err.Error(), "custody-support") {
			t.Fatalf("bob's refusal does not say what is needed: %v", err)
		}
		logFile := filepath.Join(t.TempDir(), "manager.log")
		if err := os.WriteFile(logFile, []byte(logs.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		out = k.ok(t, "", "history", "verify", rec.Device.Name, "--audit-log", logFile)
		if !strings.HasPrefix(out, rec.Device.Name+": history intact: entries 1..") {
			t.Fatalf("audit log: %q", out)
		}
	})

	t.Run("label from the cluster matches the factory's key", func(t *testing.T) {
		out := k.ok(t, "", "label", rec.Device.Name, "--as", sam)
		if !strings.Contains(out, "Key:         "+rec.Fingerprint+"\n") || !strings.Contains(out, "Serial:      "+serial+"\n") {
			t.Fatalf("unexpected label %q", out)
		}
		if _, _, err := k.run("", "label", rec.Device.Name, "--svg", "x.svg", "--as", sam); err == nil || !strings.Contains(err.Error(), "device directory") {
			t.Fatalf("an SVG from the cluster: %v", err)
		}
	})

	t.Run("transfer asks, offers, and the recipient accepts", func(t *testing.T) {
		// An Operator may not: told so before being asked anything.
		if _, errOut, err := k.run("y\n", append([]string{"transfer", serial, "--to", globex.Name}, asBob...)...); err == nil || !strings.Contains(err.Error(), "forbidden") || strings.Contains(errOut, "[y/N]") {
			t.Fatalf("an Operator's transfer: %v (asked: %q)", err, errOut)
		}
		_, errOut, err := k.run("n\n", "transfer", serial, "--to", globex.Name, "-n", acmeNS, "--as", alice)
		if err == nil || !strings.Contains(err.Error(), "aborted") {
			t.Fatalf("answering no did not abort: %v", err)
		}
		for _, want := range []string{model + " " + serial, "tenant " + acme.Name, "to tenant " + globex.Name} {
			if !strings.Contains(errOut, want) {
				t.Fatalf("the question %q does not name %q", errOut, want)
			}
		}
		var trs custodyv1alpha1.TransferList
		if err := admin.List(context.Background(), &trs, client.InNamespace(acmeNS)); err != nil || len(trs.Items) != 0 {
			t.Fatalf("aborting created %d Transfers (%v)", len(trs.Items), err)
		}
		// --dry-run=server creates nothing.
		k.ok(t, "", "transfer", serial, "--to", globex.Name, "-n", acmeNS, "--as", alice, "--dry-run=server")
		if err := admin.List(context.Background(), &trs, client.InNamespace(acmeNS)); err != nil || len(trs.Items) != 0 {
			t.Fatalf("a server dry run created %d Transfers (%v)", len(trs.Items), err)
		}
		out := k.ok(t, "y\n", "transfer", claimName, "--to", globex.Name, "-n", acmeNS, "--as", alice)
		if !strings.Contains(out, "transfer "+claimName+"-to-"+globex.Name+": Offered until") ||
			!strings.Contains(out, "kubectl custody transfer accept "+serial+" --model "+model+" --from "+acme.Name+"\n") {
			t.Fatalf("unexpected output %q", out)
		}
		// Accepting from a tenant that made no offer says so at once, and holds nothing.
		out, _, err = k.run("", "transfer", "accept", rec.Device.Name, "--from", "no-such-tenant", "--name", "no-offer", "-n", globexNS, "--as", eve, "--timeout", "30s")
		if !strings.Contains(out, "claim no-offer: Pending (NoTransferOffer)") || !errors.Is(err, kubectlcustody.ErrUndecided) {
			t.Fatalf("unexpected output %q, error %v (want not decided yet)", out, err)
		}
		out = k.ok(t, "", "transfer", "accept", rec.Device.Name, "--from", acme.Name, "-n", globexNS, "--as", eve)
		if !strings.Contains(out, "claim "+claimName+": Bound") {
			t.Fatalf("unexpected output %q", out)
		}
		waitPhase(t, &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: acmeNS, Name: claimName}}, custodyv1alpha1.ClaimPhaseLost)
		// The new owner is named as a tenant, not as its namespace.
		out = k.ok(t, "", "devices", "-o", "wide", "-n", globexNS, "--as", eve)
		if !regexp.MustCompile(`(?m)^` + serial + `\s+` + model + `\s+Bound\s+<unknown>\s+\S+\s+` + globex.Name + `\s+` + regexp.QuoteMeta(rec.Device.Name) + `\s+` + claimName + `\s`).MatchString(out) {
			t.Fatalf("eve's devices:\n%s", out)
		}
		assertChain(t, rec.Device.Name)
	})

	t.Run("release asks, and names the new code's Secret without printing the code", func(t *testing.T) {
		_, errOut, err := k.run("", "release", serial, "-n", globexNS, "--as", eve)
		if err == nil || !strings.Contains(err.Error(), "--yes") {
			t.Fatalf("a release without an answer went ahead: %v", err)
		}
		if !strings.Contains(errOut, "Release "+model+" "+serial) || !strings.Contains(errOut, "from tenant "+globex.Name) {
			t.Fatalf("the question does not name the device and tenant: %q", errOut)
		}
		out := k.ok(t, "yes\n", "release", serial, "-n", globexNS, "--as", eve, "--rotate-claim-code")
		secret := claimName + "-release-claim-code"
		if !strings.Contains(out, "released from tenant "+globex.Name) || !strings.Contains(out, "Secret "+secret) {
			t.Fatalf("unexpected output %q", out)
		}
		newCode := string(readSecret(t, globexNS, secret).Data["code"])
		if newCode == "" || strings.Contains(out, newCode) {
			t.Fatalf("the new code is missing or was printed: %q", out)
		}
		waitFor(t, "the device to be released", func() bool { return getDevice(t, rec.Device.Name).Spec.ClaimRef == nil })
		if _, _, err := k.run("y\n", "release", serial, "-n", globexNS, "--as", eve); err == nil || !strings.Contains(err.Error(), "not Bound") {
			t.Fatalf("releasing a released device: %v", err)
		}
		if _, _, err := k.run("y\n", "release", "SN-KC-NONE", "-n", globexNS, "--as", eve); err == nil || !strings.Contains(err.Error(), "no Claim for SN-KC-NONE in namespace "+globexNS) {
			t.Fatalf("releasing an unknown device: %v", err)
		}
	})

	t.Run("release -o yaml prints the Transfer as decided", func(t *testing.T) {
		next := newDevice(t)
		k.ok(t, next.Code.String()+"\n", append([]string{"claim", next.Device.Name}, asBob...)...)
		out := k.ok(t, "", "release", next.Device.Name, "-n", acmeNS, "--as", alice, "--yes", "-o", "yaml")
		var tr custodyv1alpha1.Transfer
		if err := yaml.Unmarshal([]byte(out), &tr); err != nil {
			t.Fatalf("-o yaml: %v\n%s", err, out)
		}
		if tr.Kind != "Transfer" || tr.Status.Phase != custodyv1alpha1.TransferPhaseCompleted || tr.Status.CompletionTime == nil || tr.Status.DeviceName != next.Device.Name {
			t.Fatalf("-o yaml printed the Transfer before it was decided:\n%s", out)
		}
		// A release offers nothing, so nothing expires.
		if _, ok := tr.Annotations["custody.dev/offer-expires-at"]; ok || tr.Status.ExpiresAt != nil {
			t.Fatalf("a release has an offer's expiry:\n%s", out)
		}
	})

	t.Run("pairing-token create", func(t *testing.T) {
		tokens := func() int {
			n := 0
			for _, s := range secretsIn(t, acmeNS) {
				if s.Type == claim.PairingTokenSecretType {
					n++
				}
			}
			return n
		}
		// A dry run prints no token: none was stored, and one printed
		// would pair no device.
		for _, dry := range []string{"--dry-run=server", "--dry-run=client"} {
			out, errOut, err := k.run("", append([]string{"pairing-token", "create", dry}, asBob...)...)
			if err != nil || out != "" || !strings.Contains(errOut, "No token is printed") || strings.Contains(errOut, "Give field staff") {
				t.Fatalf("pairing-token create %s: %v\nstdout: %q\nstderr: %q", dry, err, out, errOut)
			}
		}
		var s corev1.Secret
		if err := yaml.Unmarshal([]byte(k.ok(t, "", append([]string{"pairing-token", "create", "-o", "yaml"}, asBob...)...)), &s); err != nil || s.Type != claim.PairingTokenSecretType {
			t.Fatalf("-o yaml: %v %+v", err, s)
		}
		if n := tokens(); n != 0 {
			t.Fatalf("a dry run or -o yaml created %d tokens", n)
		}
		// --dry-run=server with -o has the API server check the Secret:
		// another tenant's user may not create it.
		if _, _, err := k.run("", "pairing-token", "create", "-n", acmeNS, "--as", eve, "-o", "yaml", "--dry-run=server"); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Fatalf("a server dry run with -o was not checked by the API server: %v", err)
		}
		// -o yaml and --dry-run=client name the tenant of -n too, also when
		// its namespace is not its name: a token for "<namespace>" claims
		// nothing.
		_, errOut, err := k.run("", "pairing-token", "create", "-n", globexNS, "--as", eve, "-o", "yaml")
		if err != nil {
			t.Fatal(err)
		}
		last := strings.TrimSpace(errOut)
		tok, err := protocol.ParsePairingToken(last[strings.LastIndex(last, "\n")+1:])
		if err != nil || tok.Tenant != globex.Name {
			t.Fatalf("pairing-token create -o yaml in namespace %s: a token for tenant %q, want %q (%v)", globexNS, tok.Tenant, globex.Name, err)
		}
		if _, errOut, err = k.run("", "pairing-token", "create", "-n", globexNS, "--as", eve, "--dry-run=client"); err != nil || !strings.Contains(errOut, ": tenant "+globex.Name+",") {
			t.Fatalf("pairing-token create --dry-run=client in namespace %s does not name tenant %s: %v %q", globexNS, globex.Name, err, errOut)
		}
		out, errOut, err := k.run("", append([]string{"pairing-token", "create", "--usage-limit", "5", "--expires-in", "24h"}, asBob...)...)
		if err != nil {
			t.Fatal(err)
		}
		tok, err = protocol.ParsePairingToken(strings.TrimSpace(out))
		if err != nil || tok.Tenant != acme.Name {
			t.Fatalf("stdout is not a pairing token of %s: %q (%v)", acme.Name, out, err)
		}
		created := readSecret(t, acmeNS, claim.PairingTokenSecretPrefix+tok.ID)
		if created.Type != claim.PairingTokenSecretType || string(created.Data[claim.TokenKeySecret]) != tok.Secret || string(created.Data[claim.TokenKeyUsageLimit]) != "5" {
			t.Fatalf("the Secret does not hold the token: %+v", created)
		}
		if !strings.Contains(errOut, "secret/"+created.Name+" created in namespace "+acmeNS+": tenant "+acme.Name+", 5 device(s), until "+string(created.Data[claim.TokenKeyExpiration])) {
			t.Fatalf("stderr does not say what was created: %q", errOut)
		}
	})
}

// TestKubectlCustodyPlugin runs the built plugin through the real kubectl,
// as a platform engineer installs it: kubectl-custody on PATH.
func TestKubectlCustodyPlugin(t *testing.T) {
	kubectl := testtools.Need(t, "kubectl", "kubernetes-client")
	startManager(t)
	const bob = "bob@plugin.example"
	tn := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: bob, Role: custodyv1alpha1.TenantRoleOperator})
	rec := newDevice(t)
	waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)

	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-custody"), "github.com/custody-dev/custody/cmd/kubectl-custody")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building kubectl-custody: %v\n%s", err, out)
	}
	k := newKubectlCustody(t)
	env := append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+k.kubeconfig)

	plugins := exec.Command(kubectl, "plugin", "list")
	plugins.Env = env
	if out, err := plugins.CombinedOutput(); err != nil || !strings.Contains(string(out), filepath.Join(dir, "kubectl-custody")) {
		t.Fatalf("kubectl does not find the plugin: %v\n%s", err, out)
	}
	cmd := exec.Command(kubectl, "custody", "devices", "-n", tn.Status.Namespace, "--as", bob)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl custody devices: %v\n%s", err, stderr.String())
	}
	row := regexp.MustCompile(`(?m)^` + rec.Device.Spec.SerialNumber + `\s+` + rec.Device.Spec.Model + `\s+Bound\s+<unknown>\s+<none>\s*$`)
	if !strings.HasPrefix(stdout.String(), "SERIAL ") || !row.MatchString(stdout.String()) {
		t.Fatalf("kubectl custody devices printed:\n%s", stdout.String())
	}
	t.Run("at a terminal the code is asked for and not echoed", func(t *testing.T) {
		// script(1) (bsdutils, Essential in Debian) runs the plugin on a
		// pseudo-terminal; were echo left on, the terminal would print the code.
		scriptPath := testtools.Need(t, "script", "bsdutils")
		other := newDevice(t)
		code := other.Code.String()
		term := exec.Command(scriptPath, "-qec", strings.Join([]string{kubectl, "custody", "claim", other.Device.Name, "-n", tn.Status.Namespace, "--as", bob}, " "), "/dev/null")
		term.Env = env
		in, err := term.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		term.Stdout, term.Stderr = &out, &out
		if err := term.Start(); err != nil {
			t.Fatal(err)
		}
		// Type the code only once asked, as a person does.
		waitFor(t, "the prompt", func() bool { return strings.Contains(out.String(), "not shown as you type): ") })
		if _, err := in.Write([]byte(code + "\n")); err != nil {
			t.Fatal(err)
		}
		if err := term.Wait(); err != nil {
			t.Fatalf("claim at a terminal: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), ": Bound (Bound)") {
			t.Fatalf("claim at a terminal:\n%s", out.String())
		}
		if strings.Contains(out.String(), code) {
			t.Fatalf("the terminal showed the code:\n%s", out.String())
		}
	})

	help := exec.Command(kubectl, "custody", "--help")
	help.Env = env
	if out, err := help.Output(); err != nil || !strings.Contains(string(out), "kubectl custody claim SN-0002 --model XR200") {
		t.Fatalf("kubectl custody --help: %v\n%s", err, out)
	}
}
