# etcdimg — the two commands are `make up` and `make test`.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
export CGO_ENABLED := 0
GO      ?= go
OUT     ?= etcdimg-out
NODES   ?= 3
GOFLAGS_BUILD := -trimpath -ldflags=-s\ -w

# Debian packages the build and the tests use, as command:package.
HOST_TOOLS := openssl:openssl qemu-system-x86_64:qemu-system-x86 sfdisk:fdisk cryptsetup:cryptsetup-bin \
	fsck.vfat:dosfstools e2fsck:e2fsprogs mkfs.ext4:e2fsprogs prometheus:prometheus promtool:prometheus \
	qemu-img:qemu-utils objdump:binutils
# Files that prove a package without a command is installed, as file:package.
HOST_FILES := /usr/share/OVMF/OVMF_CODE.fd:ovmf

# The Debian packages an image is made from, downloaded (not installed)
# into an ignored cache: the versioned cloud kernel the meta-package
# points at, and systemd-boot's EFI binaries.
DEB_CACHE := .cache/deb
export ETCDIMG_DEB_CACHE := $(CURDIR)/$(DEB_CACHE)

.PHONY: all build up chaos test bench deps host-packages debs test-tools clean
## all (plain `make`): the image packages and both binaries.
all: debs build

## deps: everything a fresh Debian machine is missing (as root).
deps: host-packages debs
	@$(GO) mod download

host-packages:
	@command -v $(GO) >/dev/null || { echo "make: Go is missing: install Go 1.26 at /usr/local/go"; exit 1; }
	@missing=""; for t in $(HOST_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	for t in $(HOST_FILES); do [ -e $${t%%:*} ] || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## debs: download (not install) the kernel and boot loader packages an image is made from,
## and save their Debian index records (with SHA-256) beside them for the build to check.
debs:
	@mkdir -p $(DEB_CACHE)
	@cd $(DEB_CACHE) && if ! ls linux-image-[0-9]*-cloud-amd64_*.deb >/dev/null 2>&1 || ! ls systemd-boot-efi_*.deb >/dev/null 2>&1; then \
		kernel=$$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $$2; exit}'); \
		if [ -z "$$kernel" ]; then apt-get update -qq; kernel=$$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $$2; exit}'); fi; \
		echo "make: downloading $$kernel systemd-boot-efi into $(DEB_CACHE)"; \
		rm -f Packages; \
		apt-get download -qq "$$kernel" systemd-boot-efi 2>&1 | grep -v "^W: Download is performed unsandboxed" || true; \
		ls linux-image-[0-9]*-cloud-amd64_*.deb systemd-boot-efi_*.deb >/dev/null; \
	fi; \
	if [ ! -s Packages ]; then \
		for f in linux-image-[0-9]*-cloud-amd64_*.deb systemd-boot-efi_*.deb; do \
			apt-cache show "$$(dpkg-deb -f "$$f" Package)=$$(dpkg-deb -f "$$f" Version)"; echo; \
		done > Packages.tmp && mv Packages.tmp Packages; \
	fi

## build: bin/etcdimg (the host CLI), bin/etcdnode (the in-image multi-call binary)
## and bin/etcdinit (the initramfs's /init, which runs etcdnode from the ESP).
build:
	$(GO) build $(GOFLAGS_BUILD) -o bin/etcdimg ./cmd/etcdimg
	$(GO) build $(GOFLAGS_BUILD) -o bin/etcdnode ./cmd/etcdnode
	$(GO) build $(GOFLAGS_BUILD) -o bin/etcdinit ./cmd/etcdinit

## up: from a fresh machine: install, build, build the member images into
## $(OUT), boot them in QEMU and print the health table. The cluster keeps
## running; `bin/etcdimg down` stops it. Already running: print its health.
up: deps build
	bin/etcdimg build --out $(OUT) $(if $(wildcard $(OUT)/etcdimg.yaml),,--nodes $(NODES))
	@if bin/etcdimg status --out $(OUT) >/dev/null 2>&1; then bin/etcdimg health --out $(OUT); \
	else bin/etcdimg up --detach --out $(OUT); fi

## chaos: the full fault run (`etcdimg chaos`, every fault, the default
## 2 minutes of traffic) against the cluster `make up` runs, started first
## if it is not running. Exit 1 if a check fails; files in $(OUT)/chaos/.
chaos: up
	bin/etcdimg chaos --out $(OUT)

## test-tools: the real S3 server the backup tests upload to (Versity's
## S3 gateway, Apache-2.0), built once from the module proxy into .cache/bin.
## Debian's etcd 3.4 (etcd-server, etcd-client) makes the snapshot that
## the restore test takes from "another etcd".
VERSITYGW := .cache/bin/versitygw
TEST_DEBS := .cache/test-deb
## The real Kubernetes API server the Kubernetes test starts against the
## cluster (the upstream main of k8s.io/kubernetes v1.34.2), and kubeadm's
## own config loader, from their own module (e2e/tools/kubernetes), built
## once into .cache/bin (about 8 minutes cold on 2 cores).
KUBE_TOOLS := e2e/tools/kubernetes
KUBE_APISERVER := .cache/bin/kube-apiserver
KUBEADM_CHECK := .cache/bin/kubeadm-check
test-tools: $(VERSITYGW) $(KUBE_APISERVER) $(KUBEADM_CHECK)
	@mkdir -p $(TEST_DEBS)
	@cd $(TEST_DEBS) && if ! ls etcd-server_3.4*.deb etcd-client_3.4*.deb >/dev/null 2>&1; then \
		echo "make: downloading etcd-server etcd-client (Debian's etcd 3.4) into $(TEST_DEBS)"; \
		apt-get download -qq etcd-server etcd-client 2>/dev/null || { apt-get update -qq; apt-get download -qq etcd-server etcd-client 2>&1 | grep -v "^W: Download is performed unsandboxed" || true; }; \
		ls etcd-server_3.4*.deb etcd-client_3.4*.deb >/dev/null; \
	fi
$(VERSITYGW):
	@echo "make: building versitygw (the S3 server of the backup tests) into .cache/bin"
	GOBIN=$(CURDIR)/.cache/bin $(GO) install github.com/versity/versitygw/cmd/versitygw@v1.8.0

$(KUBE_APISERVER): $(KUBE_TOOLS)/go.mod $(KUBE_TOOLS)/kube-apiserver/main.go
	@echo "make: building kube-apiserver v1.34.2 (the Kubernetes test's API server) into .cache/bin"
	cd $(KUBE_TOOLS) && $(GO) build -trimpath -ldflags='-s -w -X k8s.io/component-base/version.gitVersion=v1.34.2' -o $(CURDIR)/$@ ./kube-apiserver
$(KUBEADM_CHECK): $(KUBE_TOOLS)/go.mod $(KUBE_TOOLS)/kubeadm-check/main.go
	@echo "make: building kubeadm-check (kubeadm v1.34.2's config loader) into .cache/bin"
	cd $(KUBE_TOOLS) && $(GO) build -trimpath -ldflags='-s -w' -o $(CURDIR)/$@ ./kubeadm-check

## test: every test, unit and end to end.
test: deps test-tools
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 60m ./...

## bench: build time, image size, boot-to-healthy, the lifecycle, restore
## and the chaos figures (leader kill → next write, partition heal →
## caught up), under TCG.
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 90m ./e2e/

clean:
	rm -rf bin
