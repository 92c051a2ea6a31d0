package claimcode

import "unicode"

// Contains reports whether s appears to contain a claim code in plain text:
// a run of words (split at anything but letters and digits) that together
// make a well-formed code, holding at least one digit and one letter as
// every generated code does. It returns no part of s, so that callers can
// reject input without echoing a secret.
func Contains(s string) bool {
	words := splitWords(s)
	for i := range words {
		total, hasDigit, hasLetter := 0, false, false
		for j := i; j < len(words) && total < Symbols; j++ {
			w := words[j]
			total += len(w)
			for _, r := range w {
				if unicode.IsDigit(r) {
					hasDigit = true
				} else {
					hasLetter = true
				}
			}
			if total == Symbols && hasDigit && hasLetter {
				var joined []byte
				for _, x := range words[i : j+1] {
					joined = append(joined, x...)
				}
				if _, err := Parse(string(joined)); err == nil {
					return true
				}
			}
		}
	}
	return false
}

func splitWords(s string) []string {
	var words []string
	start := -1
	for i := 0; i <= len(s); i++ {
		alnum := i < len(s) && (('0' <= s[i] && s[i] <= '9') || ('a' <= s[i] && s[i] <= 'z') || ('A' <= s[i] && s[i] <= 'Z'))
		switch {
		case alnum && start < 0:
			start = i
		case !alnum && start >= 0:
			words = append(words, s[start:i])
			start = -1
		}
	}
	return words
}
