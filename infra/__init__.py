"""Deployment assets for anysat-ray: the local stack (`python -m infra.local_stack`) and the
Kubernetes / cluster-launcher manifests that live next to it."""
