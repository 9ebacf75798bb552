#!/usr/bin/env bash
# Fetch and build the validators tests/deploy checks deploy/ with (cached; idempotent).
#
#   compose-check   compose-go (the library `docker compose` loads files with), built from the
#                   Go module proxy: schema, interpolation, env_file, depends_on, merges
#   strimzi-<v>/    Strimzi's CustomResourceDefinitions (Kafka, KafkaNodePool, KafkaTopic),
#                   generated with Strimzi's own CRD generator from its API jars (Maven Central)
#   keda-<v>/       KEDA's ScaledObject CRD and its kafka scaler source (Go module proxy)
#   kustomize       only where kubectl (which has kustomize built in) is not installed
#   systemd/        only where systemd-analyze is not installed: from Debian's systemd package
#
# Everything comes from the package registries through their ordinary clients (go, mvn) and
# ends up in ${METASTREAM_CACHE:-~/.cache/metastream}/validators.  Prints the directory.
set -euo pipefail

STRIMZI_VERSION=0.49.0
KEDA_VERSION=v2.18.0
KUSTOMIZE_VERSION=v5.5.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${METASTREAM_CACHE:-$HOME/.cache/metastream}/validators"
mkdir -p "$OUT"
tmp=""
trap 'rm -rf "$tmp"' EXIT  # a half-done step leaves nothing behind
export GOMODCACHE="$OUT/gomod" GOFLAGS=-modcacherw GOTOOLCHAIN=local

# compose-check: rebuilt when its source changes.
src="$here/tests/deploy/compose_check"
stamp="$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-16)"
if [[ "$(cat "$OUT/compose-check.stamp" 2>/dev/null)" != "$stamp" || ! -x "$OUT/compose-check" ]]; then
    (cd "$src" && go build -o "$OUT/compose-check.part" .)
    mv "$OUT/compose-check.part" "$OUT/compose-check"
    echo "$stamp" > "$OUT/compose-check.stamp"
    echo "built compose-check" >&2
fi

# Strimzi CRDs: the generator's arguments are those of Strimzi's own api/pom.xml.
strimzi="$OUT/strimzi-$STRIMZI_VERSION"
if [[ ! -s "$strimzi/kafkatopic.yaml" ]]; then
    tmp="$(mktemp -d "$OUT/strimzi.XXXXXX")"
    mvn -q -B -f "$here/tests/deploy/strimzi-crds-pom.xml" dependency:copy-dependencies \
        -Dstrimzi.version="$STRIMZI_VERSION" -DoutputDirectory="$tmp/libs" >&2
    java -cp "$tmp/libs/*" io.strimzi.crdgenerator.CrdGenerator \
        --label app:strimzi --target-kube 1.16+ --crd-api-version v1 \
        --api-versions v1beta2,v1 --storage-version v1beta2 --yaml \
        "io.strimzi.api.kafka.model.kafka.Kafka=$tmp/kafka.yaml" \
        "io.strimzi.api.kafka.model.nodepool.KafkaNodePool=$tmp/kafkanodepool.yaml" \
        "io.strimzi.api.kafka.model.topic.KafkaTopic=$tmp/kafkatopic.yaml" >&2
    rm -rf "$tmp/libs" "$strimzi"
    mv "$tmp" "$strimzi"
    echo "generated Strimzi $STRIMZI_VERSION CRDs" >&2
fi

keda="$OUT/keda-$KEDA_VERSION"
if [[ ! -s "$keda/kafka_scaler.go" ]]; then
    dir="$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "$keda.part"
    cp "$dir/config/crd/bases/keda.sh_scaledobjects.yaml" "$dir/pkg/scalers/kafka_scaler.go" "$keda.part/"
    rm -rf "$keda"
    mv "$keda.part" "$keda"
    echo "got KEDA $KEDA_VERSION ScaledObject CRD" >&2
fi
if ! command -v kubectl >/dev/null && [[ ! -x "$OUT/kustomize" ]]; then
    GOBIN="$OUT" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    echo "built kustomize $KUSTOMIZE_VERSION" >&2
fi

if ! command -v systemd-analyze >/dev/null && [[ ! -x "$OUT/systemd/systemd-analyze" ]]; then
    tmp="$(mktemp -d "$OUT/systemd.XXXXXX")"
    # The cache is not the _apt user's to write: download as ourselves.
    if ! (cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download systemd >&2); then
        apt-get update >&2
        (cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download systemd >&2)
    fi
    dpkg -x "$tmp"/systemd_*.deb "$tmp/root"
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' \
        "$OUT/systemd/root/usr/lib/x86_64-linux-gnu/systemd" "$OUT/systemd/root/usr/bin/systemd-analyze" \
        > "$tmp/systemd-analyze"
    chmod +x "$tmp/systemd-analyze"
    rm -f "$tmp"/systemd_*.deb
    rm -rf "$OUT/systemd"
    mv "$tmp" "$OUT/systemd"
    echo "extracted systemd-analyze from Debian's systemd package" >&2
fi
echo "$OUT"
