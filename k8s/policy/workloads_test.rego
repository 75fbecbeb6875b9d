package workloads_test

import data.fixtures
import data.workloads
import rego.v1

_deny(ops) := msgs if {
	msgs := workloads.deny with input as fixtures.render(fixtures.patched("Deployment", ops))
}

test_unhardened_container if {
	msgs := _deny([
		{"op": "remove", "path": "/spec/template/spec/containers/0/securityContext"},
		{"op": "remove", "path": "/spec/template/spec/securityContext"},
		{"op": "remove", "path": "/spec/template/spec/automountServiceAccountToken"},
		{"op": "remove", "path": "/spec/template/spec/containers/0/resources/limits"},
		{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "postgres:latest"},
	])
	msgs == {
		"Deployment/orchestrator (saga): automountServiceAccountToken must be false (the pods never call the API)",
		"Deployment/orchestrator (saga): container orchestrator: runAsNonRoot must be true",
		"Deployment/orchestrator (saga): container orchestrator: allowPrivilegeEscalation must be false",
		"Deployment/orchestrator (saga): container orchestrator: readOnlyRootFilesystem must be true",
		"Deployment/orchestrator (saga): container orchestrator: capabilities.drop must include ALL",
		"Deployment/orchestrator (saga): container orchestrator: seccompProfile must be RuntimeDefault",
		"Deployment/orchestrator (saga): container orchestrator: resources.limits.cpu is not set",
		"Deployment/orchestrator (saga): container orchestrator: resources.limits.memory is not set",
		"Deployment/orchestrator (saga): container orchestrator: image postgres:latest uses the tag latest",
	}
}

test_root_and_privileged if {
	msgs := _deny([
		{"op": "add", "path": "/spec/template/spec/containers/0/securityContext/runAsUser", "value": 0},
		{"op": "add", "path": "/spec/template/spec/containers/0/securityContext/privileged", "value": true},
	])
	"Deployment/orchestrator (saga): container orchestrator: runAsUser 0 (root)" in msgs
	"Deployment/orchestrator (saga): container orchestrator: privileged" in msgs
}

# The pod's settings count for every container; the container's override them.
test_container_overrides_pod if {
	msgs := _deny([{"op": "add", "path": "/spec/template/spec/containers/0/securityContext/runAsNonRoot", "value": false}])
	msgs == {"Deployment/orchestrator (saga): container orchestrator: runAsNonRoot must be true"}
}

test_image_without_tag if {
	msgs := _deny([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "postgres"}])
	msgs == {"Deployment/orchestrator (saga): container orchestrator: image postgres has no tag"}
}

# The project's own image gets its tag from the overlay.
test_own_image_without_tag if {
	count(_deny([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "registry.example.com/saga-coordinator"}])) == 0
}

test_selector_and_replicas_under_autoscaler if {
	msgs := _deny([
		{"op": "replace", "path": "/spec/selector/matchLabels/app.kubernetes.io~1name", "value": "other"},
		{"op": "add", "path": "/spec/replicas", "value": 2},
	])
	msgs == {
		`Deployment/orchestrator (saga): spec.selector {"matchLabels": {"app.kubernetes.io/name": "other"}} does not match the pod template labels {"app.kubernetes.io/name": "orchestrator"}`,
		"Deployment/orchestrator (saga): sets spec.replicas although a HorizontalPodAutoscaler owns the count (every apply would reset it)",
	}
}

test_probes_and_references if {
	msgs := _deny([
		{"op": "replace", "path": "/spec/template/spec/containers/0/livenessProbe/httpGet/port", "value": "metrics"},
		{"op": "remove", "path": "/spec/template/spec/containers/0/readinessProbe"},
		{"op": "replace", "path": "/spec/template/spec/serviceAccountName", "value": "nobody"},
		{"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "extra", "configMap": {"name": "missing"}}},
		{"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-", "value": {"name": "ghost", "mountPath": "/ghost"}},
		{"op": "add", "path": "/spec/template/spec/containers/0/envFrom/-", "value": {"configMapRef": {"name": "absent"}}},
		{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "APP_X", "valueFrom": {"configMapKeyRef": {"name": "orchestrator-config", "key": "NOPE"}}}},
		{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "APP_AUTH__OPERATORS__ALICE", "value": "t0ken"}},
	])
	"Deployment/orchestrator (saga): container orchestrator: livenessProbe port 'metrics' is not a port of the container ['grpc', 'http']" in msgs
	"Deployment/orchestrator (saga): container orchestrator: no readinessProbe" in msgs
	"Deployment/orchestrator (saga): serviceAccountName nobody is not a ServiceAccount in the manifests" in msgs
	"Deployment/orchestrator (saga): volume extra is not mounted by any container" in msgs
	"Deployment/orchestrator (saga): volume extra: ConfigMap missing is not in the manifests" in msgs
	"Deployment/orchestrator (saga): container orchestrator: volumeMount ghost has no volume" in msgs
	"Deployment/orchestrator (saga): container orchestrator: envFrom ConfigMap absent is not in the manifests" in msgs
	"Deployment/orchestrator (saga): env APP_X: ConfigMap key orchestrator-config/NOPE is not in the manifests" in msgs
	"Deployment/orchestrator (saga): container orchestrator: APP_AUTH__OPERATORS__ALICE is a literal value; take it from a Secret (secretKeyRef)" in msgs
}

# Objects with schema errors are reported by the checker; the policies leave them alone.
test_schema_invalid_skipped if {
	count(workloads.deny) == 0 with input as fixtures.render(fixtures.patched("Deployment", [{"op": "remove", "path": "/spec/template/spec/containers/0/securityContext"}]))
		with data.checked.schema_invalid as [{"kind": "Deployment", "namespace": "saga", "name": "orchestrator"}]
}

# Two objects of one name, one with schema errors: the other is still checked.
test_schema_invalid_twin if {
	twin := {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": fixtures.meta("orchestrator"), "spec": {"replicas": "two"}}
	objs := array.concat(fixtures.patched("Deployment", [{"op": "remove", "path": "/spec/template/spec/automountServiceAccountToken"}]), [twin])
	msgs := workloads.deny with input as fixtures.render(objs)
		with data.checked.schema_invalid as [{"kind": "Deployment", "namespace": "saga", "name": "orchestrator", "object": twin}]
	msgs == {"Deployment/orchestrator (saga): automountServiceAccountToken must be false (the pods never call the API)"}
}
