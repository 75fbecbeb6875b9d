# A small, valid render for the policies' unit tests (conftest verify): the orchestrator with its
# ConfigMap, ServiceAccount, Service, autoscaler, disruption budget and NetworkPolicy in namespace
# saga. Tests change it with json.patch and check what the policies then say.
package fixtures

import rego.v1

# conftest --combine's input: one {"path", "contents"} per document.
render(objs) := [{"path": "render.yaml", "contents": o} | some o in objs]

meta(name) := {
	"name": name,
	"namespace": "saga",
	"labels": {
		"app.kubernetes.io/name": name,
		"app.kubernetes.io/part-of": "saga-coordinator",
		"app.kubernetes.io/managed-by": "kustomize",
	},
}

namespace := {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "saga", "labels": {
	"app.kubernetes.io/part-of": "saga-coordinator",
	"app.kubernetes.io/managed-by": "kustomize",
	"istio-injection": "enabled",
}}}

config := {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("orchestrator-config"), "data": {
	"APP_HTTP__LISTEN": "0.0.0.0:8080",
	"APP_GRPC__LISTEN": "0.0.0.0:50051",
	"APP_DATABASE__CREATE_IF_MISSING": "false",
	"APP_KAFKA__CREATE_TOPICS": "false",
	"APP_KAFKA__BROKERS": "kafka:9092",
	"APP_LOG_FORMAT": "json",
}}

account := {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("orchestrator")}

_probe(path) := {"httpGet": {"path": path, "port": "http"}}

container := {
	"name": "orchestrator",
	"image": "registry.example.com/saga-coordinator:0.1.0",
	"command": ["/usr/local/bin/orchestrator"],
	"envFrom": [{"configMapRef": {"name": "orchestrator-config"}}],
	"env": [{"name": "APP_DATABASE__URL", "valueFrom": {"secretKeyRef": {"name": "orchestrator-db", "key": "url"}}}],
	"ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 50051}],
	"startupProbe": _probe("/healthz"),
	"livenessProbe": _probe("/healthz"),
	"readinessProbe": _probe("/readyz"),
	"resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
	"securityContext": {
		"allowPrivilegeEscalation": false,
		"readOnlyRootFilesystem": true,
		"capabilities": {"drop": ["ALL"]},
	},
	"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
}

pod_labels := {"app.kubernetes.io/name": "orchestrator"}

deployment := {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("orchestrator"), "spec": {
	"selector": {"matchLabels": pod_labels},
	"template": {"metadata": {"labels": pod_labels}, "spec": {
		"automountServiceAccountToken": false,
		"serviceAccountName": "orchestrator",
		"securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
		"containers": [container],
		"volumes": [{"name": "tmp", "emptyDir": {}}],
	}},
}}

service := {"apiVersion": "v1", "kind": "Service", "metadata": meta("orchestrator"), "spec": {
	"selector": pod_labels,
	"ports": [
		{"name": "grpc", "port": 50051, "targetPort": "grpc", "appProtocol": "tls"},
		{"name": "http-metrics", "port": 8080, "targetPort": "http"},
	],
}}

autoscaler := {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta("orchestrator"), "spec": {
	"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orchestrator"},
	"minReplicas": 2,
	"maxReplicas": 4,
	"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
}}

budget := {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("orchestrator"), "spec": {
	"maxUnavailable": 1,
	"selector": {"matchLabels": pod_labels},
}}

network_policy := {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("orchestrator"), "spec": {
	"podSelector": {"matchLabels": pod_labels},
	"policyTypes": ["Ingress"],
	"ingress": [
		{
			"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
			"ports": [{"port": "http"}],
		},
		{"from": [{"podSelector": {}}], "ports": [{"port": "grpc"}]},
	],
}}

app := [namespace, config, account, deployment, service, autoscaler, budget, network_policy]

# The render with one object replaced (by kind) by a patched copy.
patched(kind, ops) := [p |
	some o in app
	p := _patch(o, kind, ops)
]

_patch(o, kind, ops) := json.patch(o, ops) if o.kind == kind

else := o

# ---------------------------------------------------------------------- test helpers

test_fixture_is_clean if {
	every pkg in ["general", "workloads", "settings", "services", "autoscaling", "networkpolicies", "kafka", "monitoring", "istio", "argocd"] {
		count(data[pkg].deny) == 0 with input as render(app)
	}
}
