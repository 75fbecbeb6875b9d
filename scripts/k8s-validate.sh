#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: renders every kustomization under k8s/ with
# kustomize and checks every object it produces:
#   - built-in kinds with kubernetes-validate --strict against Kubernetes $K8S_VERSION (unknown
#     fields and wrong types are errors);
#   - the Strimzi custom resources against the JSON Schemas in k8s/schemas;
#   - any other kind is an error;
#   - the Prometheus Operator, Argo CD and Istio kinds against JSON Schemas converted from their
#     upstream CRDs (pinned module versions from the Go module proxy; k8s/tools/crd_schemas.py),
#     with kubernetes-validate --strict (the schemas added to a copy of its schema directory) and
#     the checker;
#   - what no standard tool expresses, in k8s/tools/check_manifests.py (k8s/README.md says why):
#     every schema error at once and unknown kinds, the metrics and labels of the PromQL in alerts
#     and dashboards (k8s/tools/check_metrics.py), `promtool check rules` per PrometheusRule, and
#     the Argo CD Applications' sources rendered as Argo CD would (for the Rego policy);
#   - then consistency and policy: the Rego policies of k8s/policy/, evaluated by conftest over the
#     whole render at once (--combine): selectors and ports line up, autoscaler/PDB/NetworkPolicy
#     targets exist, no secret values, hardened pods, settings the services accept and that are
#     complete (TLS, SASL, mounted files), Kafka topics and ACLs that match who reads and writes
#     what, every setting documented in docs/DEPLOYMENT.md; alerts with severity and a runbook
#     (a heading of docs/OPERATIONS.md), dashboards, scraping, mesh policies that never admit more
#     than the NetworkPolicies, Argo CD projects that admit what their Applications render.
# Then the operations checks: the policies' unit tests (`conftest verify`), `promtool check rules`
# and `promtool test rules` on the alerts of k8s/components/monitoring (its tests/), actionlint on
# .github/workflows, and the unit tests of k8s/tools/check_metrics.py.
# Finally it proves the checks can fail: every manifest (or kustomization) in k8s/tests/broken/
# must be rejected for exactly the reasons its `# expect:` lines give — each expected reason
# reported, no other error; so must every promtool unit test in k8s/tests/broken/promtool/ and
# every workflow in k8s/tests/broken/actionlint/.
#
#   scripts/k8s-validate.sh        # exit 0 only if all renders pass and every broken one fails
#   scripts/k8s-validate.sh -q     # errors and the summary lines of each target only
#
# Needs python3 (with pip), go, and apt-get (Debian) for promtool and shellcheck. Installed on
# first use into ~/.cache/saga-coordinator (SAGA_CACHE), pinned, and reused: kubernetes-validate
# (PyPI), kustomize, conftest and actionlint (`go install`), the CRDs (`go mod download`,
# converted, the sources then deleted), promtool and shellcheck (the binaries only, extracted from
# Debian's prometheus and shellcheck packages: no server is installed or started).
# Nothing here talks to a cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAGA_CACHE="${SAGA_CACHE:-$HOME/.cache/saga-coordinator}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
KV_VERSION="1.33.1" # kubernetes-validate release; ships schemas for Kubernetes 1.24 … 1.33
KV_DIR="$SAGA_CACHE/kubernetes-validate-$KV_VERSION"
CHECK="$ROOT/k8s/tools/check_manifests.py"
POLICY="$ROOT/k8s/policy"
# The policies without their unit tests (conftest test would load those too, for nothing).
POLICY_FILES=()
for f in "$POLICY"/*.rego; do
    case "$f" in *_test.rego) ;; *) POLICY_FILES+=(-p "$f") ;; esac
done

QUIET=()
[ "${1:-}" = "-q" ] && QUIET=(--quiet)

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------- tools

command -v python3 >/dev/null || die "python3 is required (Debian: apt-get install python3 python3-pip)"
# The interpreter itself: a version manager's shim (pyenv) would start again for each of the
# hundred or so Python runs below, twice as slow as the interpreter alone.
PYTHON="$(python3 -c 'import sys; print(sys.executable)')"

if [ ! -f "$KV_DIR/.installed" ]; then
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "pip is required to install kubernetes-validate (Debian: apt-get install python3-pip)"
    log "installing kubernetes-validate $KV_VERSION into $KV_DIR (once)"
    rm -rf "$KV_DIR.tmp"
    mkdir -p "$SAGA_CACHE"
    # --target keeps it (and its jsonschema, PyYAML, …) out of every other Python environment.
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location \
        --target "$KV_DIR.tmp" "kubernetes-validate==$KV_VERSION" ||
        die "could not install kubernetes-validate==$KV_VERSION from PyPI"
    rm -rf "$KV_DIR" && mv "$KV_DIR.tmp" "$KV_DIR"
    touch "$KV_DIR/.installed"
fi
py() { PYTHONPATH="$KV_DIR" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 "$PYTHON" "$@"; }
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

# conftest (Open Policy Agent's Rego for configuration files), pinned, built once like kustomize.
# v0.71.1 is the newest release the Go module proxy serves that builds with Go 1.26 (its go.mod
# says go 1.26.8); it embeds OPA v1.21.1.
CONFTEST_VERSION="v0.71.1"
CONFTEST="$SAGA_CACHE/conftest-$CONFTEST_VERSION/conftest"
if [ ! -x "$CONFTEST" ]; then
    command -v go >/dev/null || die "go is required to install conftest"
    log "installing conftest $CONFTEST_VERSION into $(dirname "$CONFTEST") (once; go install)"
    GOBIN="$(dirname "$CONFTEST")" GOFLAGS=-mod=mod go install "github.com/open-policy-agent/conftest@$CONFTEST_VERSION" ||
        die "could not install conftest $CONFTEST_VERSION"
fi

# actionlint, pinned, built once like kustomize.
ACTIONLINT_VERSION="v1.7.12"
ACTIONLINT="$SAGA_CACHE/actionlint-$ACTIONLINT_VERSION/actionlint"
if [ ! -x "$ACTIONLINT" ]; then
    command -v go >/dev/null || die "go is required to install actionlint"
    log "installing actionlint $ACTIONLINT_VERSION into $(dirname "$ACTIONLINT") (once; go install)"
    GOBIN="$(dirname "$ACTIONLINT")" GOFLAGS=-mod=mod go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" ||
        die "could not install actionlint $ACTIONLINT_VERSION"
fi

# promtool and shellcheck: one binary each out of Debian's package (apt-get download + dpkg-deb,
# no install, so no Prometheus server and no service), kept in the cache. The version is pinned;
# when Debian has replaced it (a security update), the release's current version is taken and
# named in the output.
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"
SHELLCHECK_DEB_VERSION="0.9.0-1"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
deb_binary() { # PACKAGE VERSION BINARY → prints the path of the cached binary
    local pkg="$1" version="$2" bin="$3" dir debs
    for dir in "$SAGA_CACHE/deb-$pkg-$version" "$SAGA_CACHE"/deb-"$pkg"-*; do
        [ -x "$dir/$bin" ] && { echo "$dir/$bin"; return 0; }
    done
    command -v apt-get >/dev/null || return 1
    log "extracting $bin from Debian's $pkg $version into $SAGA_CACHE (once)"
    mkdir -p "$WORK/deb-$pkg"
    (
        cd "$WORK/deb-$pkg" || exit 1
        apt-get download "$pkg=$version" >/dev/null 2>&1 && exit 0
        as_root apt-get update -q >/dev/null 2>&1 || true
        apt-get download "$pkg=$version" >/dev/null 2>&1 && exit 0
        log "$pkg $version is no longer offered; taking the release's current $pkg"
        apt-get download "$pkg" >/dev/null 2>&1
    ) || return 1
    debs=("$WORK/deb-$pkg"/*.deb)
    [ -f "${debs[0]}" ] || return 1
    dir="$SAGA_CACHE/deb-$pkg-$(dpkg-deb -f "${debs[0]}" Version)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    dpkg-deb --fsys-tarfile "${debs[0]}" | tar -x -C "$dir.tmp" --strip-components=3 "./usr/bin/$bin" || return 1
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    echo "$dir/$bin"
}
PROMTOOL="$(deb_binary prometheus "$PROMETHEUS_DEB_VERSION" promtool)" || PROMTOOL="$(command -v promtool)" ||
    die "promtool is required: on Debian it comes from the prometheus package (apt-get download prometheus)"
SHELLCHECK="$(deb_binary shellcheck "$SHELLCHECK_DEB_VERSION" shellcheck)" || SHELLCHECK="$(command -v shellcheck || true)"
"$PROMTOOL" --version >/dev/null 2>&1 || die "$PROMTOOL does not run"
PROMTOOL_VERSION="$("$PROMTOOL" --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')"

# Upstream CRDs for the kinds k8s/schemas does not cover, from the Go module proxy at pinned
# versions (module, then the CRD files in it), converted to strict JSON Schemas once; the module
# sources are deleted afterwards. Nothing fetched is committed.
PROMETHEUS_OPERATOR_VERSION="v0.85.0"
ARGOCD_VERSION="v3.5.7"
ISTIO_API_VERSION="v1.32.0"
CRD_SOURCES=(
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
    "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION manifests/crds/application-crd.yaml manifests/crds/appproject-crd.yaml"
    "istio.io/api@$ISTIO_API_VERSION kubernetes/customresourcedefinitions.gen.yaml"
)
CRD_DIR="$SAGA_CACHE/crd-schemas-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-argo-cd-$ARGOCD_VERSION-istio-api-$ISTIO_API_VERSION"
if [ ! -f "$CRD_DIR/.complete" ]; then
    command -v go >/dev/null || die "go is required to fetch the CRDs (go mod download)"
    log "fetching CRDs into $CRD_DIR (once): prometheus-operator $PROMETHEUS_OPERATOR_VERSION, argo-cd $ARGOCD_VERSION, istio.io/api $ISTIO_API_VERSION"
    modcache="$SAGA_CACHE/crd-modcache.tmp"
    rm -rf "$modcache" "$CRD_DIR.tmp"
    crds=()
    for source in "${CRD_SOURCES[@]}"; do
        read -r module paths <<<"$source"
        moddir="$(cd "$WORK" && GOMODCACHE="$modcache" GOFLAGS=-modcacherw GOTOOLCHAIN=local go mod download -json "$module" |
            py -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))')" ||
            die "could not download $module from the Go module proxy"
        for path in $paths; do
            [ -f "$moddir/$path" ] || die "$module has no $path"
            crds+=("$moddir/$path")
        done
    done
    py "$ROOT/k8s/tools/crd_schemas.py" --out "$CRD_DIR.tmp" "${crds[@]}" >/dev/null || die "could not convert the CRDs"
    rm -rf "$modcache" "$CRD_DIR" && mv "$CRD_DIR.tmp" "$CRD_DIR" && touch "$CRD_DIR/.complete"
fi

# kubernetes-validate's own command line, with those schemas added under its naming
# (<kind>-<first label of the group>-<version>.json, never replacing a built-in one): a copy of the
# pinned install made of hard links, plus the new files. Its --strict run below then checks the
# Prometheus Operator, Argo CD and Istio objects too, not only the built-in kinds.
KV_CRD_DIR="$CRD_DIR/kubernetes-validate-$KV_VERSION"
if [ ! -f "$KV_CRD_DIR/.complete" ]; then
    rm -rf "$KV_CRD_DIR" && mkdir -p "$KV_CRD_DIR"
    cp -al "$KV_DIR/kubernetes_validate" "$KV_CRD_DIR/" 2>/dev/null || cp -a "$KV_DIR/kubernetes_validate" "$KV_CRD_DIR/"
    py - "$CRD_DIR" "$KV_CRD_DIR/kubernetes_validate/kubernetes-json-schema" <<'PY' || die "could not add the CRD schemas to kubernetes-validate"
import pathlib, shutil, sys
crds, schemas = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for d in schemas.glob("v*-local-strict"):
    for f in crds.glob("*.json"):
        kind, rest = f.stem.split("-", 1)
        group, version = rest.rsplit("-", 1)
        target = d / f"{kind}-{group.split('.')[0]}-{version}.json"
        if not target.exists():
            shutil.copyfile(f, target)
PY
    touch "$KV_CRD_DIR/.complete"
fi
kv_cli() { PYTHONPATH="$KV_CRD_DIR:$KV_DIR" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m kubernetes_validate "$@"; }

# What the checker needs for the operations objects (alerts, dashboards, Argo CD).
OPS_ARGS=(--crd-schemas "$CRD_DIR" --metrics-inventory "$ROOT/k8s/tools/testdata/metrics-inventory.prom"
    --promtool "$PROMTOOL" --kustomize "$KUSTOMIZE" --repo-root "$ROOT")

# What the policies read from the documentation (conftest --data, data.docs): the text of
# docs/DEPLOYMENT.md (every setting the manifests use must appear there as `NAME`, every Secret by
# name) and the anchors GitHub gives the headings of docs/OPERATIONS.md (the alerts' runbooks).
DOCS_JSON="$WORK/docs.json"
py - "$ROOT/docs/DEPLOYMENT.md" "$ROOT/docs/OPERATIONS.md" >"$DOCS_JSON" <<'PY' || die "could not read docs/"
import json, pathlib, re, sys
deployment, operations = map(pathlib.Path, sys.argv[1:3])
anchors = set()
for line in operations.read_text().splitlines():
    m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
        text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
json.dump({"docs": {"deployment": {"path": "docs/DEPLOYMENT.md", "text": deployment.read_text()},
                    "operations": {"name": operations.name, "anchors": sorted(anchors)}}}, sys.stdout)
PY

# policies LABEL FACTS TARGET FILE…: conftest with the Rego policies of k8s/policy/ over all FILEs
# together; every failure printed as `ERROR <object>: <why>`, then one summary line. FACTS is what
# the checker wrote for these files (--facts), TARGET what is checked ({"target": {…}}).
policies() {
    local label="$1" facts="$2" target="$3" json
    shift 3
    # Exit status 1 means failures, which the JSON lists; anything else leaves no JSON.
    json="$("$CONFTEST" test --combine --all-namespaces --no-color -o json "${POLICY_FILES[@]}" -d "$POLICY/data" \
        -d "$DOCS_JSON" -d "$target" -d "$facts" "$@" 2>"$WORK/conftest.err")" || true
    py -c '
import json, sys
raw = sys.stdin.read()
try:
    results = json.loads(raw)
except ValueError:
    why = raw + open(sys.argv[3]).read()
    print("ERROR conftest: " + (" ".join(why.split())[:600] or "no output"))
    sys.exit(1)
failures = sorted({f["msg"] for r in results for f in (r.get("failures") or []) + (r.get("exceptions") or [])})
packages = {r.get("namespace") for r in results if r.get("successes") or r.get("failures")}
for msg in failures:
    print("ERROR " + msg)
print(f"{sys.argv[1]}: {len(packages)} Rego policies (conftest {sys.argv[2]}, k8s/policy), "
      f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)' "$label" "$CONFTEST_VERSION" "$WORK/conftest.err" <<<"$json"
}

# ---------------------------------------------------------------------------- targets

# name | namespace-agnostic (the base) or not | kustomization directories rendered and checked together
TARGETS=(
    "base|namespace-agnostic|k8s/base"
    "base-kafka|namespace-agnostic|k8s/base/kafka"
    "dev||k8s/overlays/dev k8s/overlays/dev/kafka"
    "prod||k8s/overlays/prod k8s/overlays/prod/kafka"
    "variant dev-sasl||k8s/tests/variants/dev-sasl k8s/tests/variants/dev-sasl/kafka"
    "variant prod-mtls-https||k8s/tests/variants/prod-mtls-https k8s/overlays/prod/kafka"
    "variant prod-ops||k8s/tests/variants/prod-ops k8s/overlays/prod/kafka"
    "variant prod-audit||k8s/tests/variants/prod-audit k8s/overlays/prod/kafka"
    "argocd||k8s/argocd"
)

# The policies' unit tests and formatting, in the background meanwhile (reported with the
# operations checks below).
(
    "$CONFTEST" verify --no-color -p "$POLICY" -d "$POLICY/data" &&
        "$CONFTEST" fmt --check "$POLICY" && echo "formatted"
) >"$WORK/policy-tests.out" 2>&1 &
policy_tests=$!

failed=()
passed=0
objects=0
echo "Kubernetes manifests: $RENDERER, kubernetes-validate $KV_VERSION --strict for Kubernetes $K8S_VERSION;"
echo "upstream CRDs: prometheus-operator $PROMETHEUS_OPERATOR_VERSION, argo-cd $ARGOCD_VERSION, istio.io/api $ISTIO_API_VERSION;"
echo "conftest $CONFTEST_VERSION (Rego policies in k8s/policy), promtool $PROMTOOL_VERSION, actionlint $ACTIONLINT_VERSION${SHELLCHECK:+ with shellcheck $("$SHELLCHECK" --version | sed -n 's/^version: //p')}"
for target in "${TARGETS[@]}"; do
    IFS='|' read -r name scope dirs <<<"$target"
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
        # The kubernetes-validate command line itself (with the CRD schemas added), over the whole
        # render (it skips kinds it has no schema for; the checker below fails them instead), in
        # the background while the checker runs.
        kv_cli --strict --quiet --no-warn -k "$K8S_VERSION" "${files[@]}" >"$WORK/kv.out" 2>&1 &
        kv=$!
        facts="$WORK/facts-$(echo "$name" | tr ' /' '__').json"
        if ! py "$CHECK" --k8s-version "$K8S_VERSION" --label "$name" --facts "$facts" \
            "${OPS_ARGS[@]}" "${QUIET[@]}" "${files[@]}"; then
            ok=0
        fi
        printf '{"target": {"label": "%s", "namespace_agnostic": %s, "docs": true}}\n' "$name" \
            "$([ "$scope" = namespace-agnostic ] && echo true || echo false)" >"$facts.target.json"
        if ! policies "$name" "$facts" "$facts.target.json" "${files[@]}"; then
            ok=0
        fi
        if ! wait "$kv"; then
            cat "$WORK/kv.out"
            ok=0
        fi
        n="$(cat "${files[@]}" | grep -c '^kind:' || true)"
        objects=$((objects + n))
    fi
    if [ "$ok" = 1 ]; then passed=$((passed + 1)); else failed+=("$name"); fi
done

# ---------------------------------------------------------------------------- operations checks

ops_failed=()
echo
echo "── policies: conftest verify (the Rego unit tests, k8s/policy/*_test.rego), conftest fmt --check"
if wait "$policy_tests"; then
    echo "policies: $(grep -E '^[0-9]+ tests?,' "$WORK/policy-tests.out" | tail -n 1); formatted"
else
    cat "$WORK/policy-tests.out"
    echo "policies: FAILED"
    ops_failed+=(conftest)
fi

echo
echo "── alerts: promtool check rules, promtool test rules (k8s/components/monitoring/tests/)"
# The PrometheusRule is the only copy of the rules: its .spec is the rules file promtool reads.
RULES_DIR="$WORK/promtool"
mkdir -p "$RULES_DIR"
py -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"), sort_keys=False)' \
    "$ROOT/k8s/components/monitoring/prometheusrule.yaml" "$RULES_DIR/saga-coordinator.rules.yaml"
cp "$ROOT"/k8s/components/monitoring/tests/*.test.yaml "$RULES_DIR/"
n_rules="$(grep -c '^ *- \(alert\|record\):' "$RULES_DIR/saga-coordinator.rules.yaml" || true)"
n_tests="$(cat "$ROOT"/k8s/components/monitoring/tests/*.test.yaml | grep -c '^  - name:' || true)"
if out="$("$PROMTOOL" check rules "$RULES_DIR/saga-coordinator.rules.yaml" 2>&1)" &&
    out2="$(cd "$RULES_DIR" && "$PROMTOOL" test rules ./*.test.yaml 2>&1)"; then
    echo "alerts: $n_rules rules pass promtool check rules; $n_tests unit tests pass promtool test rules"
else
    echo "$out"
    echo "${out2:-}"
    echo "alerts: FAILED"
    ops_failed+=(promtool)
fi

echo
echo "── workflows: actionlint .github/workflows/"
# shellcheck disable=SC2016 # a Go template, not shell
ACTIONLINT_FORMAT='{{range $err := .}}ERROR {{$err.Filepath}}:{{$err.Line}}:{{$err.Column}}: {{$err.Message}} [{{$err.Kind}}]\n{{end}}'
lint() { "$ACTIONLINT" -shellcheck="${SHELLCHECK:-}" -format "$ACTIONLINT_FORMAT" "$@"; }
workflows=("$ROOT"/.github/workflows/*.y*ml)
if out="$(cd "$ROOT" && lint "${workflows[@]#"$ROOT"/}" 2>&1)"; then
    echo "workflows: ${#workflows[@]} file(s) clean (actionlint${SHELLCHECK:+, shellcheck on run: steps})"
else
    echo "$out"
    echo "workflows: FAILED"
    ops_failed+=(actionlint)
fi

echo
echo "── tools: unit tests of k8s/tools/check_metrics.py; the alerts and dashboard against the metric inventory"
if out="$(cd "$ROOT/k8s/tools" && py -m unittest -q test_check_metrics 2>&1)" &&
    out2="$(py "$ROOT/k8s/tools/check_metrics.py" --scrape "$ROOT/k8s/tools/testdata/metrics-inventory.prom" \
        "$ROOT/k8s/components/monitoring/prometheusrule.yaml" \
        "$ROOT/k8s/components/monitoring/dashboards/saga-coordinator.json" 2>&1)"; then
    echo "tools: $(grep -o 'Ran [0-9]* tests' <<<"$out"), OK; $out2"
else
    echo "$out"
    echo "${out2:-}"
    echo "tools: FAILED"
    ops_failed+=(check_metrics)
fi

# ---------------------------------------------------------------------------- broken fixtures

echo
echo "── broken fixtures (each must be rejected, for exactly the reasons it expects): k8s/tests/broken/"
rejected=0
total_fixtures=0
accepted=()

# judge REL FIXTURE STATUS ERRORS [NOTE]: the fixture must have failed (STATUS != 0) with every
# `# expect:` line of FIXTURE among ERRORS (one per line) and no other error.
judge() {
    local rel="$1" fixture="$2" status="$3" errors="$4" note="${5:-}" want line hit
    local expects=() missing=() unexpected=()
    while IFS= read -r want; do
        [ -n "$want" ] && expects+=("$want")
    done < <(sed -n 's/^# expect: //p' "$fixture")
    if [ "${#expects[@]}" = 0 ]; then
        echo "FAIL $rel has no '# expect:' line naming why it must fail"
        accepted+=("$rel")
        return
    fi
    if [ "$status" = 0 ]; then
        echo "FAIL $rel was accepted, but it is broken"
        accepted+=("$rel")
        return
    fi
    for want in "${expects[@]}"; do
        grep -qF -- "$want" <<<"$errors" || missing+=("$want")
    done
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
        return
    fi
    rejected=$((rejected + 1))
    echo "  ok  $rel rejected: $(grep -c . <<<"$errors") error(s), all expected$note"
    if [ "${#QUIET[@]}" = 0 ]; then
        awk '{ print "        " $0 }' <<<"$errors"
    fi
}

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
    # For the single-manifest fixtures, what kubernetes-validate's command line alone says (the
    # consistency fixtures are schema-valid by design), in the background meanwhile.
    kv=""
    if [ "$manifest" = "$fixture" ]; then
        kv_cli --strict --quiet --no-warn -k "$K8S_VERSION" "$manifest" >/dev/null 2>&1 &
        kv=$!
    fi
    # The checker, then the policies (without the documentation check: a fixture is not deployed).
    facts="$WORK/facts-fixture.json"
    rm -f "$facts"
    out="$(py "$CHECK" --k8s-version "$K8S_VERSION" --quiet --label "$rel" --facts "$facts" "${OPS_ARGS[@]}" "$manifest" 2>&1)" && status=0 || status=$?
    printf '{"target": {"label": "%s", "namespace_agnostic": false, "docs": false}}\n' "$rel" >"$facts.target.json"
    [ -f "$facts" ] || echo '{"checked": {}}' >"$facts"
    out+=$'\n'"$(policies "$rel" "$facts" "$facts.target.json" "$manifest" 2>&1)" || status=1
    cli=""
    if [ -n "$kv" ]; then
        cli="; kubernetes-validate CLI alone: accepts it"
        wait "$kv" || cli="; kubernetes-validate CLI alone: rejects it"
    fi
    judge "$rel" "$fixture" "$status" "$(grep '^ERROR' <<<"$out" || true)" "$cli"
done

# promtool unit tests that must fail: run next to the extracted rules like the real tests; each
# failing expectation is reported as `alertname: <name>, time: <eval_time>`.
for fixture in "$ROOT"/k8s/tests/broken/promtool/*.test.yaml; do
    [ -f "$fixture" ] || continue
    total_fixtures=$((total_fixtures + 1))
    rel="${fixture#"$ROOT"/}"
    cp "$fixture" "$RULES_DIR/broken-$(basename "$fixture")"
    out="$(cd "$RULES_DIR" && "$PROMTOOL" test rules "broken-$(basename "$fixture")" 2>&1)" && status=0 || status=$?
    rm -f "$RULES_DIR/broken-$(basename "$fixture")"
    judge "$rel" "$fixture" "$status" "$(grep -o 'alertname: .*, time: [^ ,]*' <<<"$out" || true)" "; promtool test rules"
done

# Workflows that actionlint must reject.
for fixture in "$ROOT"/k8s/tests/broken/actionlint/*.yaml; do
    [ -f "$fixture" ] || continue
    total_fixtures=$((total_fixtures + 1))
    rel="${fixture#"$ROOT"/}"
    out="$(cd "$ROOT" && lint "$rel" 2>&1)" && status=0 || status=$?
    judge "$rel" "$fixture" "$status" "$(grep '^ERROR' <<<"$out" || true)" "; actionlint"
done

# ---------------------------------------------------------------------------- verdict

echo
echo "Summary: ${passed}/${#TARGETS[@]} renders valid ($objects objects), ${rejected}/${total_fixtures} broken fixtures rejected, operations checks (conftest verify and fmt, promtool, actionlint, check_metrics): $([ "${#ops_failed[@]}" = 0 ] && echo passed || echo "FAILED: ${ops_failed[*]}")"
if [ "${#failed[@]}" -gt 0 ] || [ "${#accepted[@]}" -gt 0 ] || [ "${#ops_failed[@]}" -gt 0 ]; then
    [ "${#failed[@]}" -gt 0 ] && echo "invalid renders: ${failed[*]}"
    [ "${#accepted[@]}" -gt 0 ] && echo "broken fixtures not rejected as expected: ${accepted[*]}"
    echo "k8s-validate: FAILED"
    exit 1
fi
echo "k8s-validate: OK"
