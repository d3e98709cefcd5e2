package loadtest

import (
	"time"

	"github.com/spf13/pflag"
)

// AddFlags registers the flags of `hsmca loadtest acme` on fs, bound to c,
// so that every front end of the generator takes the same flags.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.URL, "url", "", "ACME directory URL (loopback unless --allow-remote)")
	fs.IntVar(&c.Clients, "clients", 1, "concurrent clients, one ACME account each")
	fs.IntVar(&c.Orders, "orders", 0, "total orders over all clients (0: until --duration)")
	fs.DurationVar(&c.Duration, "duration", 0, "stop placing new orders after this long (0: until --orders)")
	fs.DurationVar(&c.MaxTime, "max-time", 0, "hard cap on the whole run; orders still in flight are abandoned (default --duration+1m, or 10m)")
	fs.IntVar(&c.NamesPerOrder, "names-per-order", 1, "DNS names per order")
	fs.StringVar(&c.KeyType, "key-type", "ecdsa-p256", "certificate key type: ecdsa-p256 or rsa-2048")
	fs.StringVar(&c.Challenge, "challenge", HTTP01, "challenge to solve: http-01, tls-alpn-01 or dns-01")
	fs.IntVar(&c.HTTPPort, "http-port", 80, "port of the http-01 server on 127.0.0.1 (Pebble validates on 5002)")
	fs.IntVar(&c.TLSPort, "tls-port", 443, "port of the tls-alpn-01 server on 127.0.0.1 (Pebble validates on 5001)")
	fs.StringVar(&c.DNSAddr, "dns-addr", "", "run the stub DNS server here (HOST:PORT); point the CA's resolver at it")
	fs.StringVar(&c.Domain, "domain", "load.test", "parent domain of every name ordered")
	fs.StringVar(&c.CABundle, "ca-bundle", "", "PEM file of roots for the directory's TLS certificate")
	fs.BoolVar(&c.Insecure, "insecure", false, "do not verify the directory's TLS certificate")
	fs.DurationVar(&c.Poll, "poll", 10*time.Millisecond, "polling interval when the server sends no Retry-After")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a directory or DNS address that is not on loopback")
	fs.StringVar(&c.SaveCerts, "save-certs", "", "write every downloaded certificate chain into `DIR` (one PEM file per order)")
}
