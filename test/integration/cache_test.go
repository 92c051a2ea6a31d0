package integration

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestManagerCachesOnlyItsConfigMaps: the manager's cache keeps the
// ConfigMaps labelled as Custody's and none of the cluster's others.
func TestManagerCachesOnlyItsConfigMaps(t *testing.T) {
	m := startManager(t)
	ctx := context.Background()
	foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: uniq("foreign"), Namespace: "default"}, Data: map[string]string{"k": "v"}}
	ours := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: uniq("ours"), Namespace: "default",
		Labels: map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}}}
	for _, cm := range []*corev1.ConfigMap{foreign, ours} {
		if err := admin.Create(ctx, cm); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.Delete(context.Background(), cm) })
	}
	// The watch delivers in order: once the later, labelled ConfigMap is
	// cached, the earlier one would be too if the cache kept it.
	waitFor(t, "the labelled ConfigMap in the manager's cache", func() bool {
		return m.Manager.GetCache().Get(ctx, client.ObjectKeyFromObject(ours), &corev1.ConfigMap{}) == nil
	})
	var list corev1.ConfigMapList
	if err := m.Manager.GetCache().List(ctx, &list, client.InNamespace("default")); err != nil {
		t.Fatal(err)
	}
	for _, cm := range list.Items {
		if cm.Labels[custodyv1alpha1.LabelManagedBy] != custodyv1alpha1.ManagedByValue {
			t.Errorf("the manager caches ConfigMap %s/%s, which is not Custody's", cm.Namespace, cm.Name)
		}
	}
	if err := m.Manager.GetClient().Get(ctx, client.ObjectKeyFromObject(foreign), &corev1.ConfigMap{}); !apierrors.IsNotFound(err) {
		t.Errorf("reading a foreign ConfigMap through the manager's cache: %v, want not found", err)
	}
}
