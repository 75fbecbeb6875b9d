package networkpolicies_test

import data.fixtures
import data.networkpolicies
import rego.v1

_deny(ops) := msgs if {
	msgs := networkpolicies.deny with input as fixtures.render(fixtures.patched("NetworkPolicy", ops))
}

test_selects_nothing if {
	_deny([{"op": "replace", "path": "/spec/podSelector/matchLabels/app.kubernetes.io~1name", "value": "x"}]) == {`NetworkPolicy/orchestrator (saga): podSelector {"matchLabels": {"app.kubernetes.io/name": "x"}} matches no pods in the manifests`}
}

test_named_port if {
	_deny([{"op": "replace", "path": "/spec/ingress/0/ports/0/port", "value": "metrics"}]) == {"NetworkPolicy/orchestrator (saga): ingress port 'metrics' is not a named port of the selected pods ['grpc', 'http']"}
}

test_egress_without_dns if {
	ops := [
		{"op": "add", "path": "/spec/policyTypes/-", "value": "Egress"},
		{"op": "add", "path": "/spec/egress", "value": [{"ports": [{"port": 5432}]}]},
	]
	_deny(ops) == {"NetworkPolicy/orchestrator (saga): restricts egress but allows no DNS (port 53)"}
	count(_deny(array.concat(ops, [{"op": "add", "path": "/spec/egress/-", "value": {"ports": [{"port": 53, "protocol": "UDP"}]}}]))) == 0
}

# A namespace-wide policy selects no pod by label: nothing to match.
test_namespace_wide if {
	count(_deny([{"op": "replace", "path": "/spec/podSelector", "value": {}}])) == 0
}
