package notification

import (
	"errors"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	body := []byte(`{"id":"sha256:ab"}`)
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	h := Sign(key, body, at)
	if err := Verify(key, h, body, at.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		key  []byte
		h    string
		body []byte
		now  time.Time
		want error
	}{
		"other key":      {[]byte("another key, 32 bytes long......"), h, body, at, ErrMismatch},
		"edited body":    {key, h, []byte(`{"id":"sha256:cd"}`), at, ErrMismatch},
		"replayed later": {key, h, body, at.Add(time.Hour), ErrStale},
		"no signature":   {key, "t=1", body, at, ErrMalformed},
		"garbage":        {key, "v1", body, at, ErrMalformed},
	} {
		if err := Verify(tc.key, tc.h, tc.body, tc.now, 5*time.Minute); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func FuzzVerifyNeverPanics(f *testing.F) {
	f.Add("t=1,v1=00", []byte("{}"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		_ = Verify([]byte("k"), header, body, time.Unix(1, 0), time.Minute)
	})
}
