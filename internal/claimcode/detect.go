package claimcode

import "unicode"

// Contains reports whether s appears to contain a claim code in plain text,
// in the shapes people copy it in: five consecutive words of four symbols
// (as printed) or one word of twenty, that make a well-formed code holding
// at least one digit and one letter, as every generated code does. Words
// are split at anything but ASCII letters and digits. It returns no part of
// s, so that callers can reject input without echoing a secret.
func Contains(s string) bool {
	words := splitWords(s)
	for i, w := range words {
		if len(w) == Symbols && looksLikeCode(w) {
			return true
		}
		if len(w) == 4 && i+5 <= len(words) {
			joined := ""
			for _, x := range words[i : i+5] {
				if len(x) != 4 {
					joined = ""
					break
				}
				joined += x
			}
			if joined != "" && looksLikeCode(joined) {
				return true
			}
		}
	}
	return false
}

func looksLikeCode(s string) bool {
	hasDigit, hasLetter := false, false
	for _, r := range s {
		if unicode.IsDigit(r) {
			hasDigit = true
		} else {
			hasLetter = true
		}
	}
	if !hasDigit || !hasLetter {
		return false
	}
	_, err := Parse(s)
	return err == nil
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
