"""Policy-as-code: Cedar authorization plus the typed data policy, in versioned bundles.

``policies.bundle.load_bundle`` loads a bundle directory or packed ``.tar.gz`` and
refuses anything malformed with ``policies.errors.PolicyError``; its ``engine``
(``policies.cedar_engine.CedarEngine``) answers stage 2 (authorize), and its ``data``
(``policies.data_policy.DataPolicy``) drives the later stages. The default bundle lives
in ``policies/bundles/default/``.
"""
