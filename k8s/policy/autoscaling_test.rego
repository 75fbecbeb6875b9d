package autoscaling_test

import data.autoscaling
import data.fixtures
import rego.v1

_deny(kind, ops) := msgs if {
	msgs := autoscaling.deny with input as fixtures.render(fixtures.patched(kind, ops))
}

test_target_missing if {
	_deny("HorizontalPodAutoscaler", [{"op": "replace", "path": "/spec/scaleTargetRef/name", "value": "orchestrater"}]) == {"HorizontalPodAutoscaler/orchestrator (saga): scaleTargetRef Deployment/orchestrater is not in the manifests"}
}

test_bounds_and_requests if {
	msgs := _deny("HorizontalPodAutoscaler", [
		{"op": "replace", "path": "/spec/minReplicas", "value": 5},
		{"op": "add", "path": "/spec/metrics/-", "value": {"type": "Resource", "resource": {"name": "ephemeral-storage", "target": {"type": "Utilization", "averageUtilization": 50}}}},
	])
	msgs == {
		"HorizontalPodAutoscaler/orchestrator (saga): minReplicas 5 > maxReplicas 4",
		"HorizontalPodAutoscaler/orchestrator (saga): scales on ephemeral-storage utilisation but Deployment/orchestrator (saga) container orchestrator requests no ephemeral-storage",
	}
}

test_budget if {
	_deny("PodDisruptionBudget", [{"op": "add", "path": "/spec/minAvailable", "value": 1}]) == {"PodDisruptionBudget/orchestrator (saga): set exactly one of minAvailable and maxUnavailable"}
	_deny("PodDisruptionBudget", [{"op": "replace", "path": "/spec/selector/matchLabels/app.kubernetes.io~1name", "value": "x"}]) == {`PodDisruptionBudget/orchestrator (saga): selector {"matchLabels": {"app.kubernetes.io/name": "x"}} matches no Deployment/StatefulSet pods`}
}

# The autoscaler's minReplicas bounds the budget, not the Deployment's (absent) replicas.
test_budget_against_autoscaler if {
	ops := [{"op": "remove", "path": "/spec/maxUnavailable"}, {"op": "add", "path": "/spec/minAvailable", "value": 2}]
	_deny("PodDisruptionBudget", ops) == {"PodDisruptionBudget/orchestrator (saga): minAvailable 2 with as few as 2 replica(s) of Deployment/orchestrator (saga): no voluntary eviction could ever proceed"}
	objs := [o | some o in fixtures.patched("PodDisruptionBudget", ops); o.kind != "HorizontalPodAutoscaler"]
	msgs := autoscaling.deny with input as fixtures.render(objs)
	msgs == {"PodDisruptionBudget/orchestrator (saga): minAvailable 2 with as few as 1 replica(s) of Deployment/orchestrator (saga): no voluntary eviction could ever proceed"}
}

# An autoscaler with schema errors still owns the count: no derived error about the budget.
test_invalid_autoscaler_bounds_nothing if {
	ops := [{"op": "remove", "path": "/spec/maxUnavailable"}, {"op": "add", "path": "/spec/minAvailable", "value": 1}]
	objs := [o |
		some p in fixtures.patched("PodDisruptionBudget", ops)
		o := fixtures._patch(p, "HorizontalPodAutoscaler", [{"op": "replace", "path": "/spec/minReplicas", "value": "two"}])
	]
	count(autoscaling.deny) == 0 with input as fixtures.render(objs)
		with data.checked.schema_invalid as [{"kind": "HorizontalPodAutoscaler", "namespace": "saga", "name": "orchestrator"}]
}
