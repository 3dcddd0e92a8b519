#!/usr/bin/env python3
"""Checks deploy/kubernetes/*.yaml without a cluster: YAML syntax (python3-yaml), the
fields every object needs, and that the manifests agree with each other and with cpuchat:
probes on /health and /health/live, a grace period longer than --drain-timeout, CPU
requests equal to --threads, selectors that match the pods, the HPA's metric served by
the adapter rules. Usage: check_manifests.py DEPLOY_DIR"""
import pathlib
import sys

import yaml

errors = []


def check(ok, what):
    if not ok:
        errors.append(what)


def flag(args, name):
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def main(deploy_dir):
    docs = []
    for path in sorted(pathlib.Path(deploy_dir, "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            check(isinstance(doc, dict), f"{path.name}: a document is not a mapping")
            for key in ("apiVersion", "kind", "metadata"):
                check(key in doc, f"{path.name}: {doc.get('kind', '?')} lacks {key}")
            check(bool(doc.get("metadata", {}).get("name")), f"{path.name}: {doc.get('kind')} has no metadata.name")
            docs.append((path.name, doc))
    by_kind = {}
    for name, doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"):
        check(kind in by_kind, f"no {kind}")
    if errors:
        return

    dep = by_kind["Deployment"][0]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    check(dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "Deployment selector does not match its pods")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    check(args[0] == "serve", "the container does not run `cpuchat serve`")
    drain = int(flag(args, "--drain-timeout") or 30)
    check(pod.get("terminationGracePeriodSeconds", 30) > drain,
          f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} <= --drain-timeout {drain}")
    threads = flag(args, "--threads")
    check(threads is not None and str(c["resources"]["requests"]["cpu"]) == threads,
          f"CPU request {c['resources']['requests'].get('cpu')} != --threads {threads}")
    check(c["readinessProbe"]["httpGet"]["path"] == "/health", "readinessProbe is not on /health")
    check(c["livenessProbe"]["httpGet"]["path"] == "/health/live", "livenessProbe is not on /health/live")
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(port_names.get("http") == int(flag(args, "--port") or 8080), "container port != --port")

    for svc in by_kind["Service"]:
        check(svc["spec"]["selector"].items() <= pod_labels.items(), f"Service {svc['metadata']['name']} selects no pod")
    for pdb in by_kind["PodDisruptionBudget"]:
        check(pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB selects no pod")
    hpa = by_kind["HorizontalPodAutoscaler"][0]
    check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA targets another Deployment")
    check(hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"], "replicas outside the HPA range")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["config.yaml"])
    served = [r["name"]["as"] for r in adapter["rules"]]
    check(metric in served, f"HPA metric {metric} is not served by the adapter rules ({served})")
    exposed = pathlib.Path(deploy_dir, "..", "src", "server", "prometheus.cpp").read_text()
    check(f'"{metric}"' in exposed, f"cpuchat does not expose {metric}")


if __name__ == "__main__":
    main(sys.argv[1])
    for e in errors:
        print("manifest error:", e)
    print("manifests: " + ("FAILED" if errors else "ok"))
    sys.exit(1 if errors else 0)
