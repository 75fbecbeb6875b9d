#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: renders every kustomization under k8s/ with
# kustomize and checks every object it produces:
#   - built-in kinds with kubernetes-validate --strict against Kubernetes $K8S_VERSION (unknown
#     fields and wrong types are errors);
#   - the Strimzi custom resources against the JSON Schemas in k8s/schemas;
#   - any other kind is an error;
#   - then consistency and policy (k8s/tools/check_manifests.py): selectors and ports line up,
#     autoscaler/PDB/NetworkPolicy targets exist, no secret values, hardened pods, settings the
#     services accept and that are complete (TLS, SASL, mounted files), Kafka topics and ACLs that
#     match who reads and writes what, every setting documented in docs/DEPLOYMENT.md.
# Finally it proves the checks can fail: every manifest (or kustomization) in k8s/tests/broken/
# must be rejected for exactly the reasons its `# expect:` lines give — each expected reason
# reported, no other error.
#
#   scripts/k8s-validate.sh        # exit 0 only if all renders pass and every broken one fails
#   scripts/k8s-validate.sh -q     # errors and one summary line per target only
#
# Needs python3 (with pip) and go. kubernetes-validate (PyPI) and kustomize (`go install`) are
# installed on first use into ~/.cache/saga-coordinator (SAGA_CACHE), pinned, and reused.
# Nothing here talks to a cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAGA_CACHE="${SAGA_CACHE:-$HOME/.cache/saga-coordinator}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
KV_VERSION="1.33.1" # kubernetes-validate release; ships schemas for Kubernetes 1.24 … 1.33
KV_DIR="$SAGA_CACHE/kubernetes-validate-$KV_VERSION"
CHECK="$ROOT/k8s/tools/check_manifests.py"
DOCS="$ROOT/docs/DEPLOYMENT.md"

QUIET=()
[ "${1:-}" = "-q" ] && QUIET=(--quiet)

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------- tools

command -v python3 >/dev/null || die "python3 is required (Debian: apt-get install python3 python3-pip)"

if [ ! -f "$KV_DIR/.installed" ]; then
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip is required to install kubernetes-validate (Debian: apt-get install python3-pip)"
    log "installing kubernetes-validate $KV_VERSION into $KV_DIR (once)"
    rm -rf "$KV_DIR.tmp"
    mkdir -p "$SAGA_CACHE"
    # --target keeps it (and its jsonschema, PyYAML, …) out of every other Python environment.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location \
        --target "$KV_DIR.tmp" "kubernetes-validate==$KV_VERSION" ||
        die "could not install kubernetes-validate==$KV_VERSION from PyPI"
    rm -rf "$KV_DIR" && mv "$KV_DIR.tmp" "$KV_DIR"
    touch "$KV_DIR/.installed"
fi
py() { PYTHONPATH="$KV_DIR" PYTHONNOUSERSITE=1 python3 "$@"; }
py -c "import kubernetes_validate, jsonschema, yaml" 2>/dev/null ||
    die "kubernetes-validate in $KV_DIR does not import; delete that directory and run again"

# kustomize itself, pinned and built once with `go install` into the cache (the same renderer
# everywhere; kubectl is not needed and not used).
KUSTOMIZE_VERSION="v5.7.1"
KUSTOMIZE="$SAGA_CACHE/kustomize-$KUSTOMIZE_VERSION/kustomize"
if [ ! -x "$KUSTOMIZE" ]; then
    command -v go >/dev/null || die "go is required to install kustomize (Debian: apt-get install golang)"
    log "installing kustomize $KUSTOMIZE_VERSION into $(dirname "$KUSTOMIZE") (once; go install)"
    GOBIN="$(dirname "$KUSTOMIZE")" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" ||
        die "could not install kustomize $KUSTOMIZE_VERSION"
fi
render() { "$KUSTOMIZE" build "$1"; }
RENDERER="kustomize $KUSTOMIZE_VERSION"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------- targets

# name | options for the checker | kustomization directories rendered and checked together
TARGETS=(
    "base|--namespace-agnostic|k8s/base"
    "base-kafka|--namespace-agnostic|k8s/base/kafka"
    "dev||k8s/overlays/dev k8s/overlays/dev/kafka"
    "prod||k8s/overlays/prod k8s/overlays/prod/kafka"
    "variant dev-sasl||k8s/tests/variants/dev-sasl k8s/tests/variants/dev-sasl/kafka"
    "variant prod-mtls-https||k8s/tests/variants/prod-mtls-https k8s/overlays/prod/kafka"
)

failed=()
passed=0
objects=0
echo "Kubernetes manifests: $RENDERER, kubernetes-validate $KV_VERSION --strict for Kubernetes $K8S_VERSION"
for target in "${TARGETS[@]}"; do
    IFS='|' read -r name opts dirs <<<"$target"
    echo
    echo "── $name: $dirs"
    files=()
    ok=1
    for dir in $dirs; do
        out="$WORK/$(echo "$name-$dir" | tr ' /' '__').yaml"
        if ! render "$ROOT/$dir" >"$out" 2>"$out.err"; then
            echo "ERROR $dir does not render:"
            sed 's/^/    /' "$out.err"
            ok=0
            continue
        fi
        files+=("$out")
    done
    if [ "$ok" = 1 ]; then
        # The kubernetes-validate command line itself, over the whole render (it skips kinds it
        # has no schema for; the checker below fails them instead).
        if ! kv_out="$(py -m kubernetes_validate --strict --quiet --no-warn -k "$K8S_VERSION" "${files[@]}" 2>&1)"; then
            echo "$kv_out"
            ok=0
        fi
        # shellcheck disable=SC2086 # opts is a word list on purpose
        if ! py "$CHECK" --k8s-version "$K8S_VERSION" --docs "$DOCS" --label "$name" \
            ${opts} "${QUIET[@]}" "${files[@]}"; then
            ok=0
        fi
        n="$(cat "${files[@]}" | grep -c '^kind:' || true)"
        objects=$((objects + n))
    fi
    if [ "$ok" = 1 ]; then passed=$((passed + 1)); else failed+=("$name"); fi
done

# ---------------------------------------------------------------------------- broken fixtures

echo
echo "── broken fixtures (each must be rejected, for exactly the reasons it expects): k8s/tests/broken/"
rejected=0
total_fixtures=0
accepted=()
for fixture in "$ROOT"/k8s/tests/broken/*.yaml "$ROOT"/k8s/tests/broken/*/kustomization.yaml; do
    [ -f "$fixture" ] || continue
    total_fixtures=$((total_fixtures + 1))
    rel="${fixture#"$ROOT"/}"
    if [ "$(basename "$fixture")" = kustomization.yaml ]; then
        rel="${rel%/kustomization.yaml}/"
        manifest="$WORK/fixture-$(echo "$rel" | tr '/' '_').yaml"
        if ! render "$(dirname "$fixture")" >"$manifest" 2>"$manifest.err"; then
            echo "FAIL $rel does not render (a fixture must render and then fail validation):"
            sed 's/^/       /' "$manifest.err"
            accepted+=("$rel")
            continue
        fi
    else
        manifest="$fixture"
    fi
    out="$(py "$CHECK" --k8s-version "$K8S_VERSION" --quiet --label "$rel" "$manifest" 2>&1)" && status=0 || status=$?
    # For the single-manifest fixtures, show what kubernetes-validate's command line alone says
    # (the consistency fixtures are schema-valid by design).
    cli=""
    if [ "$manifest" = "$fixture" ]; then
        cli="; kubernetes-validate CLI alone: accepts it"
        py -m kubernetes_validate --strict --quiet --no-warn -k "$K8S_VERSION" "$manifest" >/dev/null 2>&1 ||
            cli="; kubernetes-validate CLI alone: rejects it"
    fi
    expects=()
    while IFS= read -r want; do
        [ -n "$want" ] && expects+=("$want")
    done < <(sed -n 's/^# expect: //p' "$fixture")
    if [ "${#expects[@]}" = 0 ]; then
        echo "FAIL $rel has no '# expect:' line naming why it must fail"
        accepted+=("$rel")
        continue
    fi
    if [ "$status" = 0 ]; then
        echo "FAIL $rel was accepted, but it is broken"
        accepted+=("$rel")
        continue
    fi
    errors="$(grep '^ERROR' <<<"$out" || true)"
    missing=()
    for want in "${expects[@]}"; do
        grep -qF -- "$want" <<<"$errors" || missing+=("$want")
    done
    unexpected=()
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        hit=0
        for want in "${expects[@]}"; do
            if [[ "$line" == *"$want"* ]]; then hit=1; break; fi
        done
        [ "$hit" = 1 ] || unexpected+=("$line")
    done <<<"$errors"
    if [ "${#missing[@]}" -gt 0 ] || [ "${#unexpected[@]}" -gt 0 ]; then
        echo "FAIL $rel was rejected, but not for exactly the expected reasons:"
        [ "${#missing[@]}" -gt 0 ] && printf '       expected, not reported: %s\n' "${missing[@]}"
        [ "${#unexpected[@]}" -gt 0 ] && printf '       reported, not expected: %s\n' "${unexpected[@]}"
        accepted+=("$rel")
        continue
    fi
    rejected=$((rejected + 1))
    echo "  ok  $rel rejected: $(wc -l <<<"$errors") error(s), all expected$cli"
    if [ "${#QUIET[@]}" = 0 ]; then
        awk '{ print "        " $0 }' <<<"$errors"
    fi
done

# ---------------------------------------------------------------------------- verdict

echo
echo "Summary: ${passed}/${#TARGETS[@]} renders valid ($objects objects), ${rejected}/${total_fixtures} broken fixtures rejected"
if [ "${#failed[@]}" -gt 0 ] || [ "${#accepted[@]}" -gt 0 ]; then
    [ "${#failed[@]}" -gt 0 ] && echo "invalid renders: ${failed[*]}"
    [ "${#accepted[@]}" -gt 0 ] && echo "broken fixtures not rejected as expected: ${accepted[*]}"
    echo "k8s-validate: FAILED"
    exit 1
fi
echo "k8s-validate: OK"
