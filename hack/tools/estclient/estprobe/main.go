// Command estprobe drives the third-party EST client library
// github.com/globalsign/est (v1.0.6, pinned by this module) for Custody's
// interoperability tests. It is a test driver for someone else's client,
// not a Custody code path: the main module no longer imports the library
// (its TPM code does not build against the go-tpm the main module needs),
// so the tests run this program instead.
//
// Usage:
//
//	estprobe -op cacerts  -host H:P [-label L] -anchor A.pem -out certs.pem
//	estprobe -op csrattrs -host H:P [-label L] -anchor A.pem -out attrs.txt
//	estprobe -op reenroll -host H:P [-label L] -anchor A.pem -cert C.pem -key K.pem -csr R.pem -out cert.pem
//
// Each operation builds one est.Client{Host, AdditionalPathSegment,
// ExplicitAnchor, Certificates, PrivateKey} and calls the library method of
// the same name (Client.CACerts, Client.CSRAttrs, Client.Reenroll), sending
// the CSR it is given unchanged. cacerts and reenroll write certificates as
// PEM; csrattrs writes one line per item, "oid <oid>" for an OID and
// "attribute <type> <value>..." for an attribute.
//
// When the server answers with a status other than 200 (the library
// returns an est.Error, and reports 202 Accepted that way too), estprobe
// prints "status <code>" on stdout and exits 2. Any other failure is
// printed on stderr with exit status 1.
package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/globalsign/est"
)

func main() {
	op := flag.String("op", "", "library operation: cacerts, csrattrs or reenroll")
	host := flag.String("host", "", "EST server host:port (Client.Host)")
	label := flag.String("label", "", "EST label (Client.AdditionalPathSegment)")
	anchor := flag.String("anchor", "", "PEM file of the server's trust anchors (Client.ExplicitAnchor)")
	certFile := flag.String("cert", "", "optional PEM file of the client certificate, leaf first (Client.Certificates)")
	keyFile := flag.String("key", "", "PEM file of the client certificate's PKCS#8 private key (Client.PrivateKey), with -cert")
	csrFile := flag.String("csr", "", "PEM file of the CSR to send (reenroll)")
	out := flag.String("out", "", "file to write the result to")
	timeout := flag.Duration("timeout", time.Minute, "time limit of the operation")
	flag.Parse()

	err := run(*op, *host, *label, *anchor, *certFile, *keyFile, *csrFile, *out, *timeout)
	var estErr est.Error
	switch {
	case err == nil:
	case errors.As(err, &estErr):
		fmt.Printf("status %d\n", estErr.StatusCode())
		fmt.Fprintln(os.Stderr, "estprobe:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "estprobe:", err)
		os.Exit(1)
	}
}

func run(op, host, label, anchorFile, certFile, keyFile, csrFile, out string, timeout time.Duration) error {
	if host == "" || anchorFile == "" || out == "" {
		return errors.New("-host, -anchor and -out are required")
	}
	c := &est.Client{Host: host, AdditionalPathSegment: label}
	anchors, err := readBlocks(anchorFile, "CERTIFICATE")
	if err != nil {
		return err
	}
	c.ExplicitAnchor = x509.NewCertPool()
	for _, der := range anchors {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("%s: %w", anchorFile, err)
		}
		c.ExplicitAnchor.AddCert(cert)
	}
	if certFile != "" {
		ders, err := readBlocks(certFile, "CERTIFICATE")
		if err != nil {
			return err
		}
		for _, der := range ders {
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("%s: %w", certFile, err)
			}
			c.Certificates = append(c.Certificates, cert)
		}
		keys, err := readBlocks(keyFile, "PRIVATE KEY")
		if err != nil {
			return err
		}
		if c.PrivateKey, err = x509.ParsePKCS8PrivateKey(keys[0]); err != nil {
			return fmt.Errorf("%s: %w", keyFile, err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var result []byte
	switch op {
	case "cacerts":
		certs, err := c.CACerts(ctx)
		if err != nil {
			return err
		}
		for _, cert := range certs {
			result = append(result, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
		}
	case "csrattrs":
		attrs, err := c.CSRAttrs(ctx)
		if err != nil {
			return err
		}
		var b strings.Builder
		for _, oid := range attrs.OIDs {
			fmt.Fprintf(&b, "oid %v\n", oid)
		}
		for _, attr := range attrs.Attributes {
			fmt.Fprintf(&b, "attribute %v", attr.Type)
			for _, v := range attr.Values {
				fmt.Fprintf(&b, " %v", v)
			}
			b.WriteString("\n")
		}
		result = []byte(b.String())
	case "reenroll":
		ders, err := readBlocks(csrFile, "CERTIFICATE REQUEST")
		if err != nil {
			return err
		}
		csr, err := x509.ParseCertificateRequest(ders[0])
		if err != nil {
			return fmt.Errorf("%s: %w", csrFile, err)
		}
		cert, err := c.Reenroll(ctx, csr)
		if err != nil {
			return err
		}
		result = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	default:
		return fmt.Errorf("unknown -op %q: want cacerts, csrattrs or reenroll", op)
	}
	return os.WriteFile(out, result, 0o600)
}

// readBlocks returns the DER of every PEM block of type typ in file, and
// fails if there is none.
func readBlocks(file, typ string) ([][]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var ders [][]byte
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type == typ {
			ders = append(ders, block.Bytes)
		}
	}
	if len(ders) == 0 {
		return nil, fmt.Errorf("%s: no %s PEM block", file, typ)
	}
	return ders, nil
}
