# hsmca — make targets. `make run` brings up a demo CA; `make test` passes the tests.
GO      ?= go
BIN     := bin/hsmca
PKGS    := ./...
RUNDIR  ?= ./demo
FUZZTIME ?= 10s

.PHONY: all deps build test vet fmt-check run bench bench-store bench-peers fuzz test-crash clean

all: build

# deps installs what the tests need from Debian's packages (SoftHSM2 and
# pkcs11-tool for the PKCS#11 backend, certbot and openssl as outside
# clients). Idempotent; skipped when everything is present.
deps:
	@./scripts/deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/hsmca

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

test: deps fmt-check vet build
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/hsmca
	HSMCA=$(CURDIR)/$(BIN) $(GO) test -race -timeout 20m $(PKGS)

run: build
	$(BIN) quickstart --dir $(RUNDIR)

bench: build
	./scripts/bench.sh

# bench-store: store size and `cert show` latency with STORE_CERTS
# (1000000) certificates (issue 4); make bench runs it too.
bench-store: build
	./scripts/bench-store.sh

bench-peers: build
	./scripts/bench-peers.sh

fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

test-crash: build
	HSMCA=$(CURDIR)/$(BIN) $(GO) test -tags crash -run TestCrashUnderLoad -count=1 -timeout 20m -v ./server/

clean:
	rm -rf bin
