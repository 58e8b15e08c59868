"""Plumbing shared by the operator, the node-agent and the gateway: authentication of data-plane
callers (:mod:`tars_common.auth`), TLS contexts (:mod:`tars_common.tls`) and the Kubernetes client
configuration (:mod:`tars_common.kube`).

It sits right above :mod:`tars_api` and imports nothing else of the project, so the three programs
stay siblings that never import each other.
"""
