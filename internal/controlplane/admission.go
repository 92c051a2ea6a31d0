package controlplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// This file emulates, for custody-dev and the integration tests only, the
// admission cert-manager's own webhook enforces on CertificateRequests in a
// cluster. cert-manager implements it in internal packages of its module
// (internal/webhook/admission/certificaterequest/identity and .../approval,
// internal/apis/certmanager/validation), which cannot be imported, so this is
// an equivalent written from them:
//
//   - on CREATE, spec.username, uid, groups and extra are overwritten with the
//     authenticated requester (whatever the request said), and must equal it;
//   - on UPDATE, they cannot change, nor can anything else in spec, nor any
//     cert-manager.io annotation;
//   - at most one Approved and one Denied condition, both True, never both;
//     once set they cannot be removed or changed;
//   - only a user allowed to `approve` `signers` in cert-manager.io, named
//     <resource>.<group>/* or <resource>.<group>/[<namespace>.]<issuer>
//     (SubjectAccessReview), may add Approved or Denied.
//
// In a cluster cert-manager's webhook does this; nothing here is shipped.

// Paths the admission server serves.
const (
	admissionMutatePath   = "/cert-manager/mutate-certificaterequests"
	admissionValidatePath = "/cert-manager/validate-certificaterequests"
)

// certManagerAdmission is the emulated cert-manager admission webhook.
type certManagerAdmission struct {
	server *http.Server
	url    string
}

// startCertManagerAdmission serves the emulated admission on a free
// loopback port with the serving certificate in certDir (the one envtest
// made for the manager's webhooks, which the API server trusts through
// caBundle), and registers it with the API server.
func (cp *ControlPlane) startCertManagerAdmission(ctx context.Context, certDir string, caBundle []byte) (*certManagerAdmission, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
	if err != nil {
		return nil, fmt.Errorf("loading the webhook serving certificate: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &crAdmission{client: cp.Client}
	mux := http.NewServeMux()
	mux.Handle(admissionMutatePath, &admission.Webhook{Handler: admission.HandlerFunc(h.mutate)})
	mux.Handle(admissionValidatePath, &admission.Webhook{Handler: admission.HandlerFunc(h.validate)})
	a := &certManagerAdmission{
		server: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		},
		url: "https://" + ln.Addr().String(),
	}
	go func() { _ = a.server.ServeTLS(ln, "", "") }()
	if err := cp.registerCertManagerAdmission(ctx, a.url, caBundle); err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

func (a *certManagerAdmission) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.server.Shutdown(ctx)
}

// registerCertManagerAdmission creates (or, after a restart on kept data,
// repoints) the webhook configurations of the emulated admission.
func (cp *ControlPlane) registerCertManagerAdmission(ctx context.Context, url string, caBundle []byte) error {
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	rule := func(ops []admissionregistrationv1.OperationType, resources ...string) []admissionregistrationv1.RuleWithOperations {
		return []admissionregistrationv1.RuleWithOperations{{
			Operations: ops,
			Rule:       admissionregistrationv1.Rule{APIGroups: []string{cmapi.SchemeGroupVersion.Group}, APIVersions: []string{"*"}, Resources: resources},
		}}
	}
	clientConfig := func(path string) admissionregistrationv1.WebhookClientConfig {
		u := url + path
		return admissionregistrationv1.WebhookClientConfig{URL: &u, CABundle: caBundle}
	}
	mutating := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "custody-dev-cert-manager-emulation"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "certificaterequest-identity.dev-emulation.custody.dev",
			ClientConfig:            clientConfig(admissionMutatePath),
			Rules:                   rule([]admissionregistrationv1.OperationType{admissionregistrationv1.Create}, "certificaterequests"),
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	validating := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "custody-dev-cert-manager-emulation"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "certificaterequest-admission.dev-emulation.custody.dev",
			ClientConfig:            clientConfig(admissionValidatePath),
			Rules:                   rule([]admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update}, "certificaterequests", "certificaterequests/status"),
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	for _, o := range []client.Object{mutating, validating} {
		err := cp.Client.Create(ctx, o)
		if apierrors.IsAlreadyExists(err) {
			existing := o.DeepCopyObject().(client.Object)
			if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(o), existing); err != nil {
				return err
			}
			o.SetResourceVersion(existing.GetResourceVersion())
			err = cp.Client.Update(ctx, o)
		}
		if err != nil {
			return fmt.Errorf("registering the cert-manager admission emulation: %w", err)
		}
	}
	return nil
}

// crAdmission handles admission of CertificateRequests.
type crAdmission struct {
	// client asks the API server SubjectAccessReviews and maps issuer kinds
	// to resources.
	client client.Client
}

// mutate stamps the requester's identity on a created CertificateRequest.
func (h *crAdmission) mutate(_ context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || req.Resource.Group != cmapi.SchemeGroupVersion.Group || req.Resource.Resource != "certificaterequests" {
		return admission.Allowed("")
	}
	var obj map[string]any
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	stamped, err := stampIdentity(obj, req.UserInfo)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, stamped)
}

// stampIdentity sets spec.username, uid, groups and extra of a
// CertificateRequest (as JSON) to the requester's and returns it marshalled.
func stampIdentity(obj map[string]any, user authenticationv1.UserInfo) ([]byte, error) {
	spec, _ := obj["spec"].(map[string]any)
	if spec == nil {
		spec = map[string]any{}
		obj["spec"] = spec
	}
	delete(spec, "username")
	delete(spec, "uid")
	delete(spec, "groups")
	delete(spec, "extra")
	if user.Username != "" {
		spec["username"] = user.Username
	}
	if user.UID != "" {
		spec["uid"] = user.UID
	}
	if len(user.Groups) > 0 {
		spec["groups"] = user.Groups
	}
	if len(user.Extra) > 0 {
		spec["extra"] = user.Extra
	}
	return json.Marshal(obj)
}

// validate enforces identity, immutability, final decisions and who may
// decide.
func (h *crAdmission) validate(ctx context.Context, req admission.Request) admission.Response {
	if req.Resource.Group != cmapi.SchemeGroupVersion.Group || req.Resource.Resource != "certificaterequests" {
		return admission.Allowed("")
	}
	cr := &cmapi.CertificateRequest{}
	if err := json.Unmarshal(req.Object.Raw, cr); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	var errs field.ErrorList
	switch req.Operation {
	case admissionv1.Create:
		errs = validateCreate(req.UserInfo, cr)
	case admissionv1.Update:
		old := &cmapi.CertificateRequest{}
		if err := json.Unmarshal(req.OldObject.Raw, old); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
		errs = validateUpdate(old, cr)
		if len(errs) == 0 && req.SubResource == "status" && decisionAdded(old, cr) {
			allowed, err := h.mayDecide(ctx, req.UserInfo, cr)
			if err != nil {
				return admission.Errored(http.StatusInternalServerError, err)
			}
			if !allowed {
				errs = append(errs, field.Forbidden(field.NewPath("status", "conditions"),
					fmt.Sprintf("user %q does not have permissions to set approved/denied conditions for issuer %v", req.UserInfo.Username, cr.Spec.IssuerRef)))
			}
		}
	}
	if len(errs) > 0 {
		return admission.Denied(errs.ToAggregate().Error())
	}
	return admission.Allowed("")
}

// validateCreate: the recorded requester is the authenticated one, and the
// decision conditions are well-formed.
func validateCreate(user authenticationv1.UserInfo, cr *cmapi.CertificateRequest) field.ErrorList {
	spec := field.NewPath("spec")
	var el field.ErrorList
	if cr.Spec.UID != user.UID {
		el = append(el, field.Forbidden(spec.Child("uid"), "uid identity must be that of the requester"))
	}
	if cr.Spec.Username != user.Username {
		el = append(el, field.Forbidden(spec.Child("username"), "username identity must be that of the requester"))
	}
	if !sameSet(cr.Spec.Groups, user.Groups) {
		el = append(el, field.Forbidden(spec.Child("groups"), "groups identity must be that of the requester"))
	}
	if len(cr.Spec.Extra) != len(user.Extra) {
		el = append(el, field.Forbidden(spec.Child("extra"), "extra identity must be that of the requester"))
	} else {
		for k, v := range cr.Spec.Extra {
			if w, ok := user.Extra[k]; !ok || !sameSet(v, w) {
				el = append(el, field.Forbidden(spec.Child("extra"), "extra identity must be that of the requester"))
				break
			}
		}
	}
	return append(el, validateDecisions(cr.Status.Conditions)...)
}

// validateUpdate: spec (with the requester's identity) and cert-manager
// annotations never change; a decision, once made, is final.
func validateUpdate(old, cr *cmapi.CertificateRequest) field.ErrorList {
	var el field.ErrorList
	spec := field.NewPath("spec")
	if old.Spec.UID != cr.Spec.UID {
		el = append(el, field.Forbidden(spec.Child("uid"), "uid identity cannot be changed once set"))
	}
	if old.Spec.Username != cr.Spec.Username {
		el = append(el, field.Forbidden(spec.Child("username"), "username identity cannot be changed once set"))
	}
	if !sameSet(old.Spec.Groups, cr.Spec.Groups) {
		el = append(el, field.Forbidden(spec.Child("groups"), "groups identity cannot be changed once set"))
	}
	if !reflect.DeepEqual(old.Spec.Extra, cr.Spec.Extra) {
		el = append(el, field.Forbidden(spec.Child("extra"), "extra identity cannot be changed once set"))
	}
	if len(el) == 0 && !reflect.DeepEqual(old.Spec, cr.Spec) {
		el = append(el, field.Forbidden(spec, "cannot change spec after creation"))
	}
	annotations := field.NewPath("metadata", "annotations")
	for _, pair := range [][2]map[string]string{{old.Annotations, cr.Annotations}, {cr.Annotations, old.Annotations}} {
		for k, v := range pair[0] {
			if isCertManagerKey(k) {
				if w, ok := pair[1][k]; !ok || v != w {
					el = append(el, field.Forbidden(annotations.Child(k), "cannot change cert-manager annotation after creation"))
				}
			}
		}
	}
	for _, t := range []cmapi.CertificateRequestConditionType{cmapi.CertificateRequestConditionApproved, cmapi.CertificateRequestConditionDenied} {
		if was := condition(old.Status.Conditions, t); was != nil && !reflect.DeepEqual(was, condition(cr.Status.Conditions, t)) {
			el = append(el, field.Forbidden(field.NewPath("status", "conditions"), fmt.Sprintf("'%s' condition may not be modified once set", t)))
		}
	}
	return append(el, validateDecisions(cr.Status.Conditions)...)
}

func isCertManagerKey(k string) bool {
	return strings.HasPrefix(k, "cert-manager.io") || strings.HasPrefix(k, "acme.cert-manager.io")
}

// validateDecisions: at most one Approved and one Denied condition, each
// True, and not both.
func validateDecisions(conds []cmapi.CertificateRequestCondition) field.ErrorList {
	path := field.NewPath("status", "conditions")
	var el field.ErrorList
	count := map[cmapi.CertificateRequestConditionType]int{}
	for _, c := range conds {
		if c.Type != cmapi.CertificateRequestConditionApproved && c.Type != cmapi.CertificateRequestConditionDenied {
			continue
		}
		count[c.Type]++
		if count[c.Type] == 2 {
			el = append(el, field.Forbidden(path, fmt.Sprintf("multiple %q conditions present", c.Type)))
		}
		if c.Status != cmmeta.ConditionTrue {
			el = append(el, field.Invalid(path.Child(string(c.Type)), c.Status, fmt.Sprintf("%q condition may only be set to True", c.Type)))
		}
	}
	if count[cmapi.CertificateRequestConditionApproved] > 0 && count[cmapi.CertificateRequestConditionDenied] > 0 {
		el = append(el, field.Forbidden(path, "both 'Denied' and 'Approved' conditions cannot coexist"))
	}
	return el
}

// decisionAdded reports whether the update adds Approved or Denied.
func decisionAdded(old, cr *cmapi.CertificateRequest) bool {
	for _, t := range []cmapi.CertificateRequestConditionType{cmapi.CertificateRequestConditionApproved, cmapi.CertificateRequestConditionDenied} {
		if condition(old.Status.Conditions, t) == nil && condition(cr.Status.Conditions, t) != nil {
			return true
		}
	}
	return false
}

func condition(conds []cmapi.CertificateRequestCondition, t cmapi.CertificateRequestConditionType) *cmapi.CertificateRequestCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

// mayDecide asks the API server whether user may approve the signer the
// request names, as cert-manager does.
func (h *crAdmission) mayDecide(ctx context.Context, user authenticationv1.UserInfo, cr *cmapi.CertificateRequest) (bool, error) {
	group, kind := cr.Spec.IssuerRef.Group, cr.Spec.IssuerRef.Kind
	if group == "" {
		group = cmapi.SchemeGroupVersion.Group
	}
	if kind == "" {
		kind = cmapi.IssuerKind
	}
	mapping, err := h.client.RESTMapper().RESTMapping(schema.GroupKind{Group: group, Kind: kind})
	if meta.IsNoMatchError(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range user.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	for _, name := range signerNames(cr.Spec.IssuerRef.Name, cr.Namespace, mapping.Resource.GroupResource(), mapping.Scope.Name() == meta.RESTScopeNameNamespace) {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.Username, UID: user.UID, Groups: user.Groups, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Group: cmapi.SchemeGroupVersion.Group, Resource: "signers", Verb: "approve", Name: name},
		}}
		if err := h.client.Create(ctx, sar); err != nil {
			return false, err
		}
		if sar.Status.Allowed {
			return true, nil
		}
	}
	return false, nil
}

// signerNames are the signer names cert-manager checks `approve` on for an
// issuer: the wildcard of its kind, then the issuer itself.
func signerNames(name, namespace string, gr schema.GroupResource, namespaced bool) []string {
	prefix := gr.Resource + "." + gr.Group + "/"
	if namespaced {
		return []string{prefix + "*", prefix + namespace + "." + name}
	}
	return []string{prefix + "*", prefix + name}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
