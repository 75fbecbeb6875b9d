# Workloads (Deployment, StatefulSet, DaemonSet, Job, ReplicaSet): selectors, hardened pods,
# resources, pinned images, probes on declared ports, references that exist (ServiceAccounts,
# ConfigMaps, volumes), no secret literals in the environment.
package workloads

import data.lib
import rego.v1

_service_accounts := {lib.name(o) | some o in lib.objects; o.kind == "ServiceAccount"}

_hpa_targets := {object.get(o, ["spec", "scaleTargetRef", "name"], null) | some o in lib.objects; o.kind == "HorizontalPodAutoscaler"}

deny contains msg if {
	some o in lib.long_running
	sel := object.get(o.spec, "selector", null)
	not lib.selects(sel, lib.pod_labels(o))
	msg := sprintf("%s: spec.selector %v does not match the pod template labels %v", [lib.label(o), sel, lib.pod_labels(o)])
}

deny contains msg if {
	some o in lib.long_running
	o.kind == "Deployment"
	lib.name(o) in _hpa_targets
	"replicas" in object.keys(o.spec)
	msg := sprintf("%s: sets spec.replicas although a HorizontalPodAutoscaler owns the count (every apply would reset it)", [lib.label(o)])
}

deny contains msg if {
	some o in lib.workloads
	object.get(lib.pod_spec(o), "automountServiceAccountToken", null) != false
	msg := sprintf("%s: automountServiceAccountToken must be false (the pods never call the API)", [lib.label(o)])
}

deny contains msg if {
	some o in lib.workloads
	sa := lib.pod_spec(o).serviceAccountName
	sa
	not sa in _service_accounts
	msg := sprintf("%s: serviceAccountName %s is not a ServiceAccount in the manifests", [lib.label(o), sa])
}

# ------------------------------------------------------------------------------ containers

# A security setting of the container, else of the pod.
_sc(r, key) := v if {
	v := r.c.securityContext[key]
} else := v if {
	v := lib.pod_spec(r.obj).securityContext[key]
}

_non_root(r) if _sc(r, "runAsNonRoot") == true

_where(r) := sprintf("%s: container %s", [lib.label(r.obj), object.get(r.c, "name", "None")])

deny contains msg if {
	some r in lib.containers
	not _non_root(r)
	msg := sprintf("%s: runAsNonRoot must be true", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	_sc(r, "runAsUser") == 0
	msg := sprintf("%s: runAsUser 0 (root)", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	object.get(r.c, ["securityContext", "allowPrivilegeEscalation"], null) != false
	msg := sprintf("%s: allowPrivilegeEscalation must be false", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	object.get(r.c, ["securityContext", "readOnlyRootFilesystem"], null) != true
	msg := sprintf("%s: readOnlyRootFilesystem must be true", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	r.c.securityContext.privileged == true
	msg := sprintf("%s: privileged", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	not "ALL" in object.get(r.c, ["securityContext", "capabilities", "drop"], [])
	msg := sprintf("%s: capabilities.drop must include ALL", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	object.get(_sc(r, "seccompProfile"), "type", null) != "RuntimeDefault"
	msg := sprintf("%s: seccompProfile must be RuntimeDefault", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	not _sc(r, "seccompProfile")
	msg := sprintf("%s: seccompProfile must be RuntimeDefault", [_where(r)])
}

deny contains msg if {
	some r in lib.containers
	some part in ["requests", "limits"]
	some res in ["cpu", "memory"]
	not res in object.keys(object.get(r.c, ["resources", part], {}))
	msg := sprintf("%s: resources.%s.%s is not set", [_where(r), part, res])
}

deny contains msg if {
	some r in lib.containers
	endswith(_image(r.c), ":latest")
	msg := sprintf("%s: image %s uses the tag latest", [_where(r), _image(r.c)])
}

# Our own image gets its tag from the overlay (kustomize images:).
deny contains msg if {
	some r in lib.containers
	image := _image(r.c)
	not endswith(image, ":latest")
	not contains(image, "@")
	parts := split(image, "/")
	last := parts[count(parts) - 1]
	not contains(last, ":")
	not contains(last, data.saga.image)
	msg := sprintf("%s: image %s has no tag", [_where(r), image])
}

_image(c) := sprintf("%v", [object.get(c, "image", "")])

deny contains msg if {
	some r in lib.containers
	some probe in ["startupProbe", "livenessProbe", "readinessProbe"]
	port := r.c[probe].httpGet.port
	not _container_has_port(r.c, port)
	names := sort([sprintf("%v", [object.get(p, "name", "None")]) | some p in object.get(r.c, "ports", [])])
	msg := sprintf("%s: %s port %s is not a port of the container %s", [_where(r), probe, lib.repr(port), lib.quoted_list(names)])
}

_container_has_port(c, port) if {
	is_string(port)
	some p in object.get(c, "ports", [])
	p.name == port
}

_container_has_port(c, port) if {
	is_number(port)
	some p in object.get(c, "ports", [])
	p.containerPort == port
}

_container_has_port(_, port) if {
	not is_string(port)
	not is_number(port)
}

deny contains msg if {
	some r in lib.containers
	r.obj.kind in lib.long_running_kinds
	not r.init
	some probe in ["livenessProbe", "readinessProbe"]
	not probe in object.keys(r.c)
	msg := sprintf("%s: no %s", [_where(r), probe])
}

deny contains msg if {
	some r in lib.containers
	some m in object.get(r.c, "volumeMounts", [])
	not _volume_exists(r.obj, m.name)
	msg := sprintf("%s: volumeMount %s has no volume", [_where(r), m.name])
}

_volume_exists(o, n) if {
	some v in object.get(lib.pod_spec(o), "volumes", [])
	v.name == n
}

_volume_exists(o, n) if {
	some t in object.get(o.spec, "volumeClaimTemplates", [])
	t.metadata.name == n
}

# ----------------------------------------------------------------------------- environment

deny contains msg if {
	some r in lib.containers
	some e in object.get(r.c, "envFrom", [])
	ref := e.configMapRef
	cm := object.get(ref, "name", null)
	not lib.configmaps[cm]
	not ref.optional
	msg := sprintf("%s: envFrom ConfigMap %s is not in the manifests", [_where(r), lib.show(cm)])
}

deny contains msg if {
	some r in lib.containers
	some e in object.get(r.c, "env", [])
	not "value" in object.keys(e)
	not e.valueFrom.secretKeyRef
	ref := e.valueFrom.configMapKeyRef
	not lib.configmaps[ref.name].data[ref.key]
	not ref.optional
	msg := sprintf("%s: env %s: ConfigMap key %s/%s is not in the manifests", [lib.label(r.obj), e.name, ref.name, ref.key])
}

deny contains msg if {
	some r in lib.containers
	some n, v in r.env
	v.from == "value"
	v.value != ""
	regex.match(data.saga.secret_looking, n)
	msg := sprintf("%s: %s is a literal value; take it from a Secret (secretKeyRef)", [_where(r), n])
}

# --------------------------------------------------------------------------------- volumes

deny contains msg if {
	some o in lib.workloads
	some v in object.get(lib.pod_spec(o), "volumes", [])
	mounted := {m.name | some c in lib.all_containers(o); some m in object.get(c, "volumeMounts", [])}
	not v.name in mounted
	msg := sprintf("%s: volume %s is not mounted by any container", [lib.label(o), v.name])
}

deny contains msg if {
	some o in lib.workloads
	some v in object.get(lib.pod_spec(o), "volumes", [])
	cm := v.configMap.name
	not lib.configmaps[cm]
	not v.configMap.optional
	msg := sprintf("%s: volume %s: ConfigMap %s is not in the manifests", [lib.label(o), v.name, cm])
}

deny contains msg if {
	some o in lib.workloads
	o.kind == "StatefulSet"
	svc := object.get(o.spec, "serviceName", "None")
	not svc in {lib.name(s) | some s in lib.objects; s.kind == "Service"}
	msg := sprintf("%s: serviceName %s is not a Service in the manifests", [lib.label(o), svc])
}
