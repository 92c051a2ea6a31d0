package controlplane

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/custody-dev/custody/config"
)

// CRDs returns Custody's CRDs followed by the pinned cert-manager CRDs, as
// embedded from config/.
func CRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, dir := range []string{"crd/bases", "third_party/cert-manager"} {
		err := eachDocument(dir, func(doc []byte) error {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := yaml.UnmarshalStrict(doc, crd); err != nil {
				return err
			}
			crds = append(crds, crd)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return crds, nil
}

// Webhooks returns the admission webhook configurations generated into
// config/webhook/manifests.yaml, with the match conditions of
// config/webhook/match_conditions.yaml, as kustomize installs them.
func Webhooks() ([]*admissionv1.MutatingWebhookConfiguration, []*admissionv1.ValidatingWebhookConfiguration, error) {
	var mutating []*admissionv1.MutatingWebhookConfiguration
	var validating []*admissionv1.ValidatingWebhookConfiguration
	err := eachDocumentOf("webhook/manifests.yaml", func(doc []byte) error {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return err
		}
		// The generated names are placeholders that kustomize prefixes.
		// These configurations point at a URL on this machine, so they
		// are named apart from an install's (custody-…-webhook-
		// configuration, pointing at a Service): applying the Helm chart
		// or config/default to custody-dev, even as a dry run, must not
		// merge a Service into a URL-based configuration.
		switch meta.Kind {
		case "ValidatingWebhookConfiguration":
			cfg := &admissionv1.ValidatingWebhookConfiguration{}
			if err := yaml.UnmarshalStrict(doc, cfg); err != nil {
				return err
			}
			cfg.Name = "custody-dev-validating-webhook-configuration"
			validating = append(validating, cfg)
		case "MutatingWebhookConfiguration":
			cfg := &admissionv1.MutatingWebhookConfiguration{}
			if err := yaml.UnmarshalStrict(doc, cfg); err != nil {
				return err
			}
			cfg.Name = "custody-dev-mutating-webhook-configuration"
			mutating = append(mutating, cfg)
		default:
			return fmt.Errorf("unexpected kind %q in config/webhook", meta.Kind)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	// The match conditions: a patch that kustomize merges by webhook name.
	err = eachDocumentOf("webhook/match_conditions.yaml", func(doc []byte) error {
		patch := &admissionv1.ValidatingWebhookConfiguration{}
		if err := yaml.UnmarshalStrict(doc, patch); err != nil {
			return err
		}
		for _, p := range patch.Webhooks {
			found := false
			for _, cfg := range validating {
				for i := range cfg.Webhooks {
					if cfg.Webhooks[i].Name == p.Name {
						cfg.Webhooks[i].MatchConditions, found = p.MatchConditions, true
					}
				}
			}
			if !found {
				return fmt.Errorf("no validating webhook %q to give match conditions", p.Name)
			}
		}
		return nil
	})
	return mutating, validating, err
}

// eachDocument calls fn with each YAML document of each embedded file in dir.
func eachDocument(dir string, fn func([]byte) error) error {
	entries, err := fs.ReadDir(config.Manifests, dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".yaml" {
			continue
		}
		if err := eachDocumentOf(path.Join(dir, e.Name()), fn); err != nil {
			return err
		}
	}
	return nil
}

// eachDocumentOf calls fn with each YAML document of the embedded file name.
func eachDocumentOf(name string, fn func([]byte) error) error {
	data, err := fs.ReadFile(config.Manifests, name)
	if err != nil {
		return err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || bytes.Equal(bytes.TrimSpace(doc), []byte("---")) {
			continue
		}
		if err := fn(doc); err != nil {
			return fmt.Errorf("decoding %s: %w", name, err)
		}
	}
}
