package services_test

import data.fixtures
import data.services
import rego.v1

_deny(ops) := msgs if {
	msgs := services.deny with input as fixtures.render(fixtures.patched("Service", ops))
}

test_target_port_not_exposed if {
	_deny([{"op": "replace", "path": "/spec/ports/1/targetPort", "value": "metrics"}]) == {"Service/orchestrator (saga): port http-metrics targets 'metrics', which Deployment/orchestrator does not expose (ports ['grpc', 'http'] / [8080, 50051])"}
	_deny([{"op": "replace", "path": "/spec/ports/1/targetPort", "value": 9090}]) == {"Service/orchestrator (saga): port http-metrics targets 9090, which Deployment/orchestrator does not expose (ports ['grpc', 'http'] / [8080, 50051])"}
}

test_selector_matches_nothing if {
	_deny([{"op": "replace", "path": "/spec/selector", "value": {"app.kubernetes.io/name": "post-svc"}}]) == {`Service/orchestrator (saga): selector {"app.kubernetes.io/name": "post-svc"} matches no Deployment/StatefulSet pods`}
	_deny([{"op": "remove", "path": "/spec/selector"}]) == {"Service/orchestrator (saga): has no selector"}
}

test_selector_matches_a_job if {
	job := {"apiVersion": "batch/v1", "kind": "Job", "metadata": fixtures.meta("orchestrator-migrate"), "spec": {"template": {
		"metadata": {"labels": fixtures.pod_labels},
		"spec": {"containers": [{"name": "x", "image": "busybox:1", "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 50051}]}]},
	}}}
	msgs := services.deny with input as fixtures.render(array.concat(fixtures.app, [job]))
	msgs == {`Service/orchestrator (saga): selector {"app.kubernetes.io/name": "orchestrator"} also matches the pods of Job/orchestrator-migrate`}
}
