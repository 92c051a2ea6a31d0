package operator

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"

	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
)

// PolicyConfig is the manager's --config file: the operator's claim policy,
// per-model tightening, and notification endpoints. Claim policies use the
// ClaimPolicy schema of Devices and Tenants.
type PolicyConfig struct {
	// ClaimPolicy tightens the built-in default (5 attempts, CodeOrPossession,
	// no cooling-off, sale records allowed).
	ClaimPolicy *custodyv1alpha1.ClaimPolicy `json:"claimPolicy,omitempty"`
	// Models tightens the policy per Device spec.model.
	Models map[string]*custodyv1alpha1.ClaimPolicy `json:"models,omitempty"`
	// Notifications are operator-wide endpoints (the ERP, a support desk).
	Notifications []NotificationConfig `json:"notifications,omitempty"`
	// NotificationCAFile holds the CAs that endpoints' certificates are
	// verified with, instead of the system's.
	NotificationCAFile string `json:"notificationCAFile,omitempty"`
}

// NotificationConfig is one operator-wide endpoint.
type NotificationConfig struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// SigningKeyFile holds the HMAC key (at least 32 bytes), typically a
	// mounted Secret.
	SigningKeyFile string `json:"signingKeyFile"`
}

var modelName = regexp.MustCompile(`^[A-Z0-9][A-Z0-9-]*[A-Z0-9]$`)

// LoadConfig reads the --config file into opts. Unknown fields are errors:
// a misspelt policy must not silently loosen nothing.
func LoadConfig(path string, opts *controllers.Options) error {
	data, err := os.ReadFile(path) //nolint:gosec // the file the operator passed with --config
	if err != nil {
		return err
	}
	var cfg PolicyConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	errs := claim.ValidateClaimPolicy("claimPolicy", cfg.ClaimPolicy)
	opts.ClaimPolicy = opts.ClaimPolicy.Defaulted().Tighten(cfg.ClaimPolicy)
	for model, p := range cfg.Models {
		if !modelName.MatchString(model) {
			errs = append(errs, fmt.Errorf("models: %q is not a model as Devices spell it (upper case)", model))
		}
		errs = append(errs, claim.ValidateClaimPolicy("models."+model, p)...)
	}
	opts.ModelPolicies = cfg.Models
	seen := map[string]bool{}
	for i, n := range cfg.Notifications {
		where := fmt.Sprintf("notifications[%d]", i)
		u, err := url.Parse(n.URL)
		switch {
		case n.Name == "" || seen[n.Name]:
			errs = append(errs, fmt.Errorf("%s.name must be set and unique", where))
		case err != nil || u.Scheme != "https" || u.Host == "":
			errs = append(errs, fmt.Errorf("%s.url must be an https:// URL", where))
		}
		seen[n.Name] = true
		key, err := os.ReadFile(n.SigningKeyFile)
		if err != nil || len(key) < controllers.MinSigningKey {
			errs = append(errs, fmt.Errorf("%s.signingKeyFile must hold at least %d bytes", where, controllers.MinSigningKey))
		}
		opts.Notifications = append(opts.Notifications, controllers.NotificationEndpoint{Name: n.Name, URL: n.URL, SigningKey: key})
	}
	if cfg.NotificationCAFile != "" {
		pem, err := os.ReadFile(cfg.NotificationCAFile)
		if err != nil {
			return err
		}
		opts.NotificationRoots = x509.NewCertPool()
		if !opts.NotificationRoots.AppendCertsFromPEM(pem) {
			errs = append(errs, errors.New("notificationCAFile holds no PEM certificate"))
		}
	}
	return errors.Join(errs...)
}
