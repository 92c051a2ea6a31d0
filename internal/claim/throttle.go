package claim

import (
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// findThrottle returns the tenant's entry for deviceName, or nil.
func findThrottle(s *custodyv1alpha1.TenantStatus, deviceName string) *custodyv1alpha1.ClaimThrottle {
	for i := range s.ClaimThrottles {
		if s.ClaimThrottles[i].DeviceName == deviceName {
			return &s.ClaimThrottles[i]
		}
	}
	return nil
}

// LockedUntil returns when the tenant's lockout from deviceName ends, or
// the zero time when it is not locked out at now.
func LockedUntil(s *custodyv1alpha1.TenantStatus, deviceName string, now time.Time) time.Time {
	e := findThrottle(s, deviceName)
	if e == nil || e.LockedUntil == nil || !now.Before(e.LockedUntil.Time) {
		return time.Time{}
	}
	return e.LockedUntil.Time
}

// Counted reports whether the attempt of claim uid has already been
// counted (reserved), so that a retried reconcile does not count it again.
func Counted(s *custodyv1alpha1.TenantStatus, deviceName string, uid types.UID) bool {
	e := findThrottle(s, deviceName)
	return e != nil && slices.Contains(e.Attempts, string(uid))
}

// maxAttemptUIDs bounds ClaimThrottle.attempts (the CRD's MaxItems).
const maxAttemptUIDs = custodyv1alpha1.MaxThrottleAttempts

// Reservation is the outcome of Reserve.
type Reservation string

const (
	// Reserved: the attempt is now counted; its code may be verified once.
	Reserved Reservation = "Reserved"
	// AlreadyCounted: an earlier reconcile counted this Claim's attempt;
	// nothing changed and no code may be verified for it again.
	AlreadyCounted Reservation = "AlreadyCounted"
	// Locked: the tenant is locked out of the device name; nothing changed.
	Locked Reservation = "Locked"
	// NoRoom: the tenant's bookkeeping is full of active lockouts.
	NoRoom Reservation = "NoRoom"
)

// Reserve counts the attempt of claim uid on deviceName before its code is
// verified, locking the tenant out once the policy says so. It is applied to
// a fresh read of the Tenant and written with the Tenant's resourceVersion:
// of concurrent reservations each one that succeeds saw the others, so at
// most p.MaxFailedAttempts codes are verified before a lockout and one after
// each lockout ends, however many claims arrive at once. It reports whether
// s changed only for Reserved.
func Reserve(s *custodyv1alpha1.TenantStatus, deviceName string, uid types.UID, now time.Time, p Policy) Reservation {
	if Counted(s, deviceName, uid) {
		return AlreadyCounted
	}
	if !LockedUntil(s, deviceName, now).IsZero() {
		return Locked
	}
	Prune(s, now, p)
	if full, _ := Full(s, deviceName, now); full {
		return NoRoom
	}
	e := findThrottle(s, deviceName)
	if e == nil {
		s.ClaimThrottles = append(s.ClaimThrottles, custodyv1alpha1.ClaimThrottle{DeviceName: deviceName})
		e = &s.ClaimThrottles[len(s.ClaimThrottles)-1]
	}
	e.Failures++
	e.LastFailureTime = metav1.NewTime(now)
	e.Attempts = append(e.Attempts, string(uid))
	if len(e.Attempts) > maxAttemptUIDs {
		e.Attempts = e.Attempts[len(e.Attempts)-maxAttemptUIDs:]
	}
	if d := p.Lockout(e.Failures); d > 0 {
		until := metav1.NewTime(now.Add(d))
		e.LockedUntil = &until
	}
	s.FailedClaimAttempts++
	return Reserved
}

// Unreserve takes back the reservation of claim uid whose code proved
// right: the attempt is not a failure. The lockout goes with it when this
// was the newest reservation (it was taken while no lockout was active, so
// any lockout now is its own); a lockout a later failure earned stays. It
// reports whether s changed.
func Unreserve(s *custodyv1alpha1.TenantStatus, deviceName string, uid types.UID) bool {
	e := findThrottle(s, deviceName)
	if e == nil {
		return false
	}
	i := slices.Index(e.Attempts, string(uid))
	if i < 0 {
		return false
	}
	newest := i == len(e.Attempts)-1
	e.Attempts = slices.Delete(e.Attempts, i, i+1)
	if e.Failures > 0 {
		e.Failures--
	}
	if s.FailedClaimAttempts > 0 {
		s.FailedClaimAttempts--
	}
	if newest {
		e.LockedUntil = nil
	}
	if e.Failures == 0 && e.LockedUntil == nil {
		RecordSuccess(s, deviceName)
	}
	return true
}

// RecordSuccess forgets the tenant's failures on deviceName.
func RecordSuccess(s *custodyv1alpha1.TenantStatus, deviceName string) bool {
	for i := range s.ClaimThrottles {
		if s.ClaimThrottles[i].DeviceName == deviceName {
			s.ClaimThrottles = append(s.ClaimThrottles[:i], s.ClaimThrottles[i+1:]...)
			return true
		}
	}
	return false
}

// maxThrottles bounds Tenant.status.claimThrottles (the CRD's MaxItems).
const maxThrottles = custodyv1alpha1.MaxClaimThrottles

// Prune drops entries that are no longer locked and whose last failure is
// older than p.Forget. If the list is still full, the oldest unlocked entry
// is dropped; a tenant with every entry locked keeps them all, and the
// caller must refuse further attempts (see Full).
func Prune(s *custodyv1alpha1.TenantStatus, now time.Time, p Policy) {
	kept := s.ClaimThrottles[:0]
	for _, e := range s.ClaimThrottles {
		locked := e.LockedUntil != nil && now.Before(e.LockedUntil.Time)
		if locked || now.Sub(e.LastFailureTime.Time) < p.Forget {
			kept = append(kept, e)
		}
	}
	s.ClaimThrottles = kept
	for len(s.ClaimThrottles) >= maxThrottles {
		oldest := -1
		for i, e := range s.ClaimThrottles {
			if e.LockedUntil != nil && now.Before(e.LockedUntil.Time) {
				continue
			}
			if oldest < 0 || e.LastFailureTime.Before(&s.ClaimThrottles[oldest].LastFailureTime) {
				oldest = i
			}
		}
		if oldest < 0 {
			return
		}
		s.ClaimThrottles = append(s.ClaimThrottles[:oldest], s.ClaimThrottles[oldest+1:]...)
	}
}

// Full reports whether the tenant's bookkeeping has no room for a new
// device name: every entry is an active lockout. New attempts must wait
// until the earliest lockout ends, which it returns.
func Full(s *custodyv1alpha1.TenantStatus, deviceName string, now time.Time) (bool, time.Time) {
	if len(s.ClaimThrottles) < maxThrottles || findThrottle(s, deviceName) != nil {
		return false, time.Time{}
	}
	var earliest time.Time
	for _, e := range s.ClaimThrottles {
		if e.LockedUntil == nil || !now.Before(e.LockedUntil.Time) {
			return false, time.Time{}
		}
		if earliest.IsZero() || e.LockedUntil.Time.Before(earliest) {
			earliest = e.LockedUntil.Time
		}
	}
	return true, earliest
}
