# Istio (when the render has mesh policies): STRICT mutual TLS namespace-wide and nothing weaker;
# sidecar injection on, but not for Jobs; ports that carry the services' own TLS declared as TLS
# and never matched on HTTP attributes; every workload under an ALLOW AuthorizationPolicy that
# never admits a source or port its NetworkPolicies do not.
package istio

import data.lib
import data.settings
import rego.v1

_peer_auths := lib.valid_of_kind("PeerAuthentication")

_authz := lib.valid_of_kind("AuthorizationPolicy")

_mesh if count(_peer_auths) + count(_authz) > 0

# ------------------------------------------------------------------------------ mutual TLS

deny contains msg if {
	_mesh
	some ns in {lib.namespace(w) | some w in lib.long_running}
	not _strict(ns)
	msg := sprintf("manifests: namespace %s: no namespace-wide PeerAuthentication with mtls.mode STRICT", [ns])
}

_strict(ns) if {
	some p in _peer_auths
	lib.namespace(p) == ns
	not lib.truthy(object.get(p, ["spec", "selector"], null))
	object.get(p, ["spec", "mtls", "mode"], null) == "STRICT"
}

deny contains msg if {
	some p in _peer_auths
	mode := object.get(p, ["spec", "mtls", "mode"], null)
	not mode in {null, "STRICT", "UNSET"}
	msg := sprintf("%s: mtls.mode %v weakens mutual TLS (STRICT is required)", [lib.label(p), mode])
}

deny contains msg if {
	some p in _peer_auths
	some port, cfg in object.get(p, ["spec", "portLevelMtls"], {})
	mode := object.get(cfg, "mode", null)
	not mode in {null, "STRICT", "UNSET"}
	msg := sprintf("%s: portLevelMtls %v: mode %v weakens mutual TLS", [lib.label(p), port, mode])
}

# ------------------------------------------------------------------------------- sidecars

_injected(n) if lib.labels(n)["istio-injection"] == "enabled"

_injected(n) if "istio.io/rev" in object.keys(lib.labels(n))

deny contains msg if {
	_mesh
	some n in lib.objects
	n.kind == "Namespace"
	not _injected(n)
	msg := sprintf("%s: mesh policies but no sidecar injection (label istio-injection: enabled or istio.io/rev)", [lib.label(n)])
}

deny contains msg if {
	_mesh
	injected := {lib.name(n) | some n in lib.objects; n.kind == "Namespace"; _injected(n)}
	some j in lib.workloads
	j.kind == "Job"
	lib.namespace(j) in injected
	meta := object.get(j, ["spec", "template", "metadata"], {})
	inject := object.get(object.get(meta, "labels", {}), "sidecar.istio.io/inject", object.get(object.get(meta, "annotations", {}), "sidecar.istio.io/inject", null))
	sprintf("%v", [inject]) != "false"
	msg := sprintf("%s: would get an Istio sidecar, which keeps its pod running: the Job never completes (label the pod template sidecar.istio.io/inject: \"false\")", [lib.label(j)])
}

# ---------------------------------------------------------------- the services' own TLS

_tls_listeners := [["APP_GRPC__TLS__CERT_FILE", "APP_GRPC__LISTEN"], ["APP_HTTP__TLS__CERT_FILE", "APP_HTTP__LISTEN"]]

# Workload name → the container port numbers that carry the service's own TLS.
tls_ports[n] := ports if {
	some _, r in lib.services
	n := lib.name(r.obj)
	ports := {to_number(port) |
		some [cert, listen] in _tls_listeners
		r.env[cert]
		port := settings.host_port(lib.value_or(r.env, listen, ""))[1]
		regex.match(`^[0-9]+$`, port)
	}
}

deny contains msg if {
	_mesh
	some s in lib.valid_of_kind("Service")
	some w in lib.long_running
	tls := tls_ports[lib.name(w)]
	lib.selects(object.get(s, ["spec", "selector"], {}), lib.pod_labels(w))
	some p in object.get(s, ["spec", "ports"], [])
	number := lib.target_number(w, object.get(p, "targetPort", p.port))
	number in tls
	proto := _app_protocol(p)
	not proto in {"tls", "https"}
	msg := sprintf("%s: port %v carries %s's own TLS but Istio would treat it as %s (its name); set appProtocol: tls", [lib.label(s), object.get(p, "name", "None"), lib.name(w), _or_unknown(proto)])
}

_app_protocol(p) := p.appProtocol if lib.truthy(object.get(p, "appProtocol", null))

else := split(object.get(p, "name", ""), "-")[0]

_or_unknown(x) := "unknown" if x == ""

else := x

# ------------------------------------------------------------------------- authorization

_allows := [a | some a in _authz; object.get(a, ["spec", "action"], "ALLOW") == "ALLOW"]

_applies(a, w) if {
	lib.namespace(a) == lib.namespace(w)
	not lib.truthy(object.get(a, ["spec", "selector"], null))
}

_applies(a, w) if {
	lib.namespace(a) == lib.namespace(w)
	lib.selects(a.spec.selector, lib.pod_labels(w))
}

deny contains msg if {
	_mesh
	some w in lib.long_running
	count([a | some a in _allows; _applies(a, w)]) == 0
	msg := sprintf("%s: no ALLOW AuthorizationPolicy applies to its pods: Istio lets every request through", [lib.label(w)])
}

_http_keys := {"paths", "notPaths", "methods", "notMethods", "hosts", "notHosts"}

# Every (policy, rule number, rule, port) an ALLOW policy admits to a workload's port.
_admitted contains [a, i + 1, rule, w, port] if {
	some w in lib.long_running
	some a in _allows
	_applies(a, w)
	some i, rule in object.get(a, ["spec", "rules"], [])
	some port in _rule_ports(rule, w)
}

deny contains msg if {
	some [a, i, rule, w, port] in _admitted
	port in object.get(tls_ports, lib.name(w), set())
	fields := sort({k | some t in object.get(rule, "to", []); some k, _ in object.get(t, "operation", {}); k in _http_keys})
	count(fields) > 0
	msg := sprintf("%s: rule %d: HTTP conditions (%s) on port %v, which carries %s's own TLS: Istio sees opaque TCP there and the rule never matches", [lib.label(a), i, concat(", ", fields), port, lib.name(w)])
}

deny contains msg if {
	some [a, i, rule, w, port] in _admitted
	lib.ingress_restricted(w)
	count(_admitting(w, port)) == 0
	msg := sprintf("%s: rule %d admits %s to port %v of %s, which no NetworkPolicy admits", [lib.label(a), i, _who(rule), port, lib.name(w)])
}

deny contains msg if {
	some [a, i, rule, w, port] in _admitted
	lib.ingress_restricted(w)
	admitting := _admitting(w, port)
	count(admitting) > 0
	count([r | some r in admitting; r.any_ns]) == 0
	allowed := {ns | some r in admitting; some ns in r.namespaces}
	not _within(rule, allowed)
	msg := sprintf("%s: rule %d admits %s to port %v of %s, which its NetworkPolicy admits only from namespace(s) %s", [lib.label(a), i, _who(rule), port, lib.name(w), concat(", ", sort(allowed))])
}

# The NetworkPolicy rules that admit something to a port.
_admitting(w, port) := [r | some r in lib.ingress_admission(w); _port_in(r, port)]

_port_in(r, _) if r.any_port

_port_in(r, port) if port in r.ports

_within(rule, allowed) if {
	not _any_source(rule)
	every ns in _sources(rule) {
		ns in allowed
	}
}

_who(rule) := "any workload" if _any_source(rule)

else := sprintf("namespace(s) %s", [concat(", ", sort(_sources(rule)))])

# The ports a rule names, or every port of the workload's containers.
_rule_ports(rule, w) := lib.port_numbers(w) if _any_port(rule)

else := {to_number(p) |
	some t in rule.to
	some p in t.operation.ports
	regex.match(`^[0-9]+$`, sprintf("%v", [p]))
}

_any_port(rule) if not lib.truthy(object.get(rule, "to", null))

_any_port(rule) if {
	some t in rule.to
	not lib.truthy(object.get(t, ["operation", "ports"], null))
}

# A rule's sources: any (no from, or a source not narrowed to namespaces), else namespaces.
_any_source(rule) if not lib.truthy(object.get(rule, "from", null))

_any_source(rule) if {
	some f in rule.from
	_source_any(object.get(f, "source", {}))
}

_principal := `^[^/]+/ns/([^/*]+)/sa/[^/]+$`

_source_any(s) if {
	not lib.truthy(object.get(s, "namespaces", null))
	not lib.truthy(object.get(s, "principals", null))
	not lib.truthy(object.get(s, "serviceAccounts", null))
}

_source_any(s) if {
	not lib.truthy(object.get(s, "namespaces", null))
	some p in s.principals
	not regex.match(_principal, p)
}

_sources(rule) := {ns | some f in rule.from; some ns in _source_namespaces(object.get(f, "source", {}))}

_source_namespaces(s) := {ns | some ns in s.namespaces} if lib.truthy(object.get(s, "namespaces", null))

_source_namespaces(s) := {regex.find_all_string_submatch_n(_principal, p, 1)[0][1] | some p in s.principals} if {
	not lib.truthy(object.get(s, "namespaces", null))
	lib.truthy(object.get(s, "principals", null))
}

# serviceAccounts "namespace/name"; without a namespace, the policy's own: not known here.
_source_namespaces(s) := ns if {
	not lib.truthy(object.get(s, "namespaces", null))
	not lib.truthy(object.get(s, "principals", null))
	lib.truthy(object.get(s, "serviceAccounts", null))
	named := {split(sa, "/")[0] | some sa in s.serviceAccounts; contains(sa, "/")}
	ns := _or_none_set(named)
}

_or_none_set(xs) := {"None"} if count(xs) == 0

else := xs
