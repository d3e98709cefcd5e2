//go:build tools

// Package tools pins the modules that the project builds on, so that go.mod
// stays stable while packages that import them are being written.
package tools

import (
	_ "filippo.io/age"
	_ "github.com/ThalesGroup/crypto11"
	_ "github.com/cloudflare/circl/secretsharing"
	_ "github.com/go-acme/lego/v5/certificate"
	_ "github.com/go-acme/lego/v5/challenge/dns01"
	_ "github.com/go-acme/lego/v5/challenge/http01"
	_ "github.com/go-acme/lego/v5/challenge/tlsalpn01"
	_ "github.com/go-acme/lego/v5/lego"
	_ "github.com/go-acme/lego/v5/registration"
	_ "github.com/go-jose/go-jose/v4"
	_ "github.com/google/certificate-transparency-go"
	_ "github.com/google/certificate-transparency-go/client"
	_ "github.com/google/certificate-transparency-go/ctutil"
	_ "github.com/google/certificate-transparency-go/x509"
	_ "github.com/miekg/dns"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/rogpeppe/go-internal/testscript"
	_ "github.com/spf13/cobra"
	_ "github.com/zmap/zlint/v3"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/crypto/acme"
	_ "golang.org/x/crypto/hkdf"
	_ "golang.org/x/term"
	_ "gopkg.in/yaml.v3"
)
