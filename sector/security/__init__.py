"""Security without a central server (issue 5): the pure core.

The model is the Sector paper's (§3): anyone may read, writing needs a place in the
write ACL, running Sphere jobs needs the compute right. The original Sector asked a
security server for each of these; here nothing is asked, everything is *signed*:

* The cluster admin key **is** the cluster CA key (``pki.ClusterCA``). The cluster id
  is derived from its public key.
* It signs one X.509 certificate per node (``NodeIdentity``): nodes authenticate each
  other with mutual TLS against the CA; a peer is a node iff its certificate is
  signed by the CA and names ``node:<name>``.
* It signs user credentials (``tokens.issue`` -> ``Grant``): write prefixes, read
  prefixes for private paths, compute and admin rights, an expiry.
* It signs the cluster policy (``tokens.Policy``): revoked users and private path
  prefixes, versioned so the newest one spreads among nodes.
* Every node verifies all of it locally with the CA public key, and decides with the
  pure functions of ``authz``. A client keeps, per cluster, the CA it trusts and its
  credential (``credstore``), and checks a node's certificate itself after the TLS
  handshake, since only the certificate tells it which cluster it reached.

No module here opens a socket or reads the clock: time comes in as ``now``.
"""

from sector.errors import CertificateError, CredentialError, PermissionDenied
from sector.security.authz import (
    ANONYMOUS,
    Identity,
    can_compute,
    can_read,
    can_write,
    covers,
    is_admin,
    require_admin,
    require_compute,
    require_node,
    require_read,
    require_write,
)
from sector.security.pki import (
    ClusterCA,
    NodeIdentity,
    cluster_id_of_leaf,
    node_client_context,
    peer_is_node,
    server_context,
    user_client_context,
)
from sector.security.tokens import (
    Grant,
    Policy,
    issue,
    restrict,
    revoke,
    sign_policy,
    supersedes,
    unrestrict,
    verify,
    verify_policy,
)

__all__ = [
    "ANONYMOUS",
    "CertificateError",
    "ClusterCA",
    "CredentialError",
    "Grant",
    "Identity",
    "NodeIdentity",
    "PermissionDenied",
    "Policy",
    "can_compute",
    "can_read",
    "can_write",
    "cluster_id_of_leaf",
    "covers",
    "is_admin",
    "issue",
    "node_client_context",
    "peer_is_node",
    "require_admin",
    "require_compute",
    "require_node",
    "require_read",
    "require_write",
    "restrict",
    "revoke",
    "server_context",
    "sign_policy",
    "supersedes",
    "unrestrict",
    "user_client_context",
    "verify",
    "verify_policy",
]
