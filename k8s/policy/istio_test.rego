package istio_test

import data.fixtures
import data.istio
import rego.v1

_strict := {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": fixtures.meta("default"), "spec": {"mtls": {"mode": "STRICT"}}}

_rule(from, ports) := {"from": [{"source": from}], "to": [{"operation": {"ports": ports}}]}

_allow := {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": fixtures.meta("orchestrator"), "spec": {
	"selector": {"matchLabels": fixtures.pod_labels},
	"action": "ALLOW",
	"rules": [
		_rule({"namespaces": ["monitoring"]}, ["8080"]),
		_rule({"principals": ["cluster.local/ns/saga/sa/user-service"]}, ["50051"]),
	],
}}

_mesh := array.concat(fixtures.app, [_strict, _allow])

_deny(objs) := msgs if {
	msgs := istio.deny with input as fixtures.render(objs)
}

test_mesh_clean if {
	count(_deny(_mesh)) == 0
}

test_weaker_mutual_tls if {
	port := {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": fixtures.meta("grpc"), "spec": {
		"selector": {"matchLabels": fixtures.pod_labels},
		"portLevelMtls": {"50051": {"mode": "DISABLE"}},
	}}
	objs := [json.patch(o, [{"op": "replace", "path": "/spec/mtls/mode", "value": "PERMISSIVE"}]) | some o in _mesh; o.kind == "PeerAuthentication"]
	rest := [o | some o in _mesh; o.kind != "PeerAuthentication"]
	_deny(array.concat(rest, array.concat(objs, [port]))) == {
		"PeerAuthentication/default (saga): mtls.mode PERMISSIVE weakens mutual TLS (STRICT is required)",
		"manifests: namespace saga: no namespace-wide PeerAuthentication with mtls.mode STRICT",
		"PeerAuthentication/grpc (saga): portLevelMtls 50051: mode DISABLE weakens mutual TLS",
	}
}

test_injection_and_jobs if {
	job := {"apiVersion": "batch/v1", "kind": "Job", "metadata": fixtures.meta("migrate"), "spec": {"template": {"spec": {
		"automountServiceAccountToken": false,
		"containers": [{"name": "m", "image": "busybox:1"}],
	}}}}
	quiet := json.patch(job, [{"op": "add", "path": "/spec/template/metadata", "value": {"labels": {"sidecar.istio.io/inject": "false"}}}])
	_deny(array.concat(_mesh, [job])) == {`Job/migrate (saga): would get an Istio sidecar, which keeps its pod running: the Job never completes (label the pod template sidecar.istio.io/inject: "false")`}
	count(_deny(array.concat(_mesh, [quiet]))) == 0
	plain := [fixtures._patch(o, "Namespace", [{"op": "remove", "path": "/metadata/labels/istio-injection"}]) | some o in _mesh]
	_deny(array.concat(plain, [job])) == {"Namespace/saga: mesh policies but no sidecar injection (label istio-injection: enabled or istio.io/rev)"}
}

test_no_allow_policy if {
	_deny([o | some o in _mesh; o.kind != "AuthorizationPolicy"]) == {"Deployment/orchestrator (saga): no ALLOW AuthorizationPolicy applies to its pods: Istio lets every request through"}
}

test_more_than_the_network_policy if {
	objs := [fixtures._patch(o, "AuthorizationPolicy", [
		{"op": "add", "path": "/spec/rules/-", "value": {"to": [{"operation": {"ports": ["8080"]}}]}},
		{"op": "add", "path": "/spec/rules/-", "value": _rule({"namespaces": ["monitoring"]}, ["9090"])},
		{"op": "add", "path": "/spec/rules/-", "value": _rule({"principals": ["cluster.local/ns/other/sa/x"]}, ["8080"])},
	]) |
		some o in _mesh
	]
	_deny(objs) == {
		"AuthorizationPolicy/orchestrator (saga): rule 3 admits any workload to port 8080 of orchestrator, which its NetworkPolicy admits only from namespace(s) monitoring",
		"AuthorizationPolicy/orchestrator (saga): rule 4 admits namespace(s) monitoring to port 9090 of orchestrator, which no NetworkPolicy admits",
		"AuthorizationPolicy/orchestrator (saga): rule 5 admits namespace(s) other to port 8080 of orchestrator, which its NetworkPolicy admits only from namespace(s) monitoring",
	}
}

# The orchestrator's own TLS on gRPC: the Service must say so, and no rule may match HTTP there.
test_own_tls if {
	tls := [p |
		some o in _mesh
		c := fixtures._patch(o, "ConfigMap", [
			{"op": "add", "path": "/data/APP_GRPC__TLS__CERT_FILE", "value": "/tmp/tls.crt"},
			{"op": "add", "path": "/data/APP_GRPC__TLS__KEY_FILE", "value": "/tmp/tls.key"},
		])
		p := fixtures._patch(c, "AuthorizationPolicy", [{"op": "add", "path": "/spec/rules/1/to/0/operation/paths", "value": ["/saga.v1.Orchestrator/*"]}])
	]
	_deny(tls) == {"AuthorizationPolicy/orchestrator (saga): rule 2: HTTP conditions (paths) on port 50051, which carries orchestrator's own TLS: Istio sees opaque TCP there and the rule never matches"}
	untagged := [fixtures._patch(o, "Service", [{"op": "remove", "path": "/spec/ports/0/appProtocol"}]) | some o in tls]
	"Service/orchestrator (saga): port grpc carries orchestrator's own TLS but Istio would treat it as grpc (its name); set appProtocol: tls" in _deny(untagged)
}
