"""The one way every TARS program gets its Kubernetes API client."""

from __future__ import annotations

import os

from kubernetes import client, config

# Reconciles and data-plane checks run concurrently in worker threads; let each have a connection.
CONNECTION_POOL_SIZE = 32


def load_client_config(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from ``kubeconfig`` when given; otherwise the pod's ServiceAccount when running in
    a cluster, else KUBECONFIG / ~/.kube/config.

    Each call returns its own client with its own configuration; the kubernetes package's global
    default configuration is left untouched.
    """
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            # KUBECONFIG read now: the kubernetes package reads it once, when it is first imported.
            kubeconfig = os.environ.get("KUBECONFIG") or None
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return client.ApiClient(configuration)
