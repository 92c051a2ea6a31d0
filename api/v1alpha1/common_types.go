package v1alpha1

// Condition types shared by every Custody kind.
const (
	// ConditionReady summarises whether the object is doing what its spec asks.
	// Its reason and message say what is missing when it is False.
	ConditionReady = "Ready"
)

// FinalizerName is the finalizer the manager puts on Tenants and Claims so
// that it can release devices and clean up before they go away.
const FinalizerName = "custody.dev/finalizer"

// Labels the manager sets on objects it owns so that they can be selected
// cheaply and traced back to their owner.
const (
	// LabelTenant names the Tenant an object belongs to.
	LabelTenant = "custody.dev/tenant"
	// LabelManagedBy marks objects created by the Custody manager.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy on Custody objects.
	ManagedByValue = "custody"
)
